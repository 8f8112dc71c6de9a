"""Lists page on a keyset cursor over a unique sort key (issue 11, item 6): orders placed in one group
share `created_at`, and paging by timestamp alone skipped them."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Api, assert_problem
from tests.services.orders.conftest import Shop
from tests.services.orders.test_store_scope import MakeKey

_keys = iter(range(10**9))


async def place_many(shop: Shop, n: int) -> list[str]:
    """n orders at once: the placement group puts most of them in one transaction, one `created_at`."""
    results = await asyncio.gather(*(shop.place(f"p{next(_keys)}") for _ in range(n)))
    assert all(status == 201 for status, _, _ in results), results
    return [body["id"] for _, body, _ in results]


async def walk(api: Api, path: str, limit: int, between: Any = None, **params: Any) -> list[Any]:
    """Every page of a list, following next_cursor; `between` runs after each page (writes meanwhile)."""
    seen: list[Any] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        status, page, _ = await api.get(path, params=query)
        assert status == 200, page
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            await between()


async def test_orders_sharing_a_timestamp_are_each_listed_once(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 100)
    placed = await place_many(shop, 40)
    # As if all 40 had left in one group (how many do depends on timing): one transaction, one now().
    await shop.pool.execute("UPDATE orders.orders SET created_at = (SELECT max(created_at) FROM orders.orders)")
    ids = [o["id"] for o in await walk(shop.orders, "/v1/orders", 4)]
    assert sorted(ids) == sorted(placed)
    rows = await shop.pool.fetch("SELECT id FROM orders.orders ORDER BY created_at DESC, id DESC")
    assert ids == [str(r["id"]) for r in rows]  # newest first, ties by id


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.integers(1, 30), page=st.integers(1, 6), meanwhile=st.lists(st.integers(0, 6), max_size=8))
async def test_paging_while_orders_arrive_sees_each_earlier_order_exactly_once(
        shop: Shop, before: int, page: int, meanwhile: list[int]) -> None:
    await shop.receive("TEE-M", "wh-1", before + sum(meanwhile) + 1)
    await place_many(shop, before)
    existing = {str(r["id"]) for r in await shop.pool.fetch("SELECT id FROM orders.orders")}
    arrivals = iter(meanwhile)
    pending: list[asyncio.Task[list[str]]] = []

    async def more() -> None:  # placed while the pager reads on: some land mid-page, in the same group
        pending.append(asyncio.create_task(place_many(shop, next(arrivals, 0))))
        await asyncio.sleep(0)

    ids = [o["id"] for o in await walk(shop.orders, "/v1/orders", page, more)]
    await asyncio.gather(*pending)
    assert len(ids) == len(set(ids)), "an order was listed twice"
    assert existing <= set(ids), f"{len(existing - set(ids))} earlier order(s) skipped"


async def test_a_cursor_of_another_list_or_tampered_is_a_422(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    await place_many(shop, 3)
    status, page, _ = await shop.orders.get("/v1/orders", params={"limit": 1})
    assert status == 200 and page["next_cursor"], page
    for bad in ("nonsense", page["next_cursor"][:-3], "W10", "x" * 600):
        status, body, _ = await shop.orders.get("/v1/orders", params={"cursor": bad})
        assert_problem(status, body, 422, field="cursor")
    status, body, _ = await shop.orders.get("/v1/sales", params={"business_day": "2025-01-31",
                                                                 "cursor": page["next_cursor"]})
    assert_problem(status, body, 422, field="cursor")


async def test_a_store_pages_only_through_its_own_orders(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 10)
    await shop.receive("TEE-M", "wh-1", 10)
    mine = await asyncio.gather(*(shop.place(f"a{i}", fulfillment={"type": "pickup", "location_id": "store-a"})
                                  for i in range(5)))
    await place_many(shop, 5)
    store_a = shop.orders.as_key(await make_key("store", "store-a"))
    ids = [o["id"] for o in await walk(store_a, "/v1/orders", 2)]
    assert sorted(ids) == sorted(body["id"] for _, body, _ in mine)


async def test_sales_page_by_cursor(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-a", 20)
    for i in range(7):
        status, body, _ = await shop.orders.post("/v1/pos/sales", idem=f"till{i}", json={
            "location_id": "store-a", "currency": "EUR", "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}],
            "tenders": [{"kind": "cash", "amount": "19.90"}]})
        assert status == 201, body
    day = body["business_day"]
    sales = await walk(shop.orders, "/v1/sales", 3, business_day=day)
    rows = await shop.pool.fetch("SELECT id FROM orders.sales ORDER BY id")
    assert [s["id"] for s in sales] == [r["id"] for r in rows] and len(rows) == 7


async def test_a_forged_cursor_out_of_the_key_range_is_a_422_not_a_500(shop: Shop) -> None:
    for path, key, params in [("/v1/sales", ["sales", 2**64], {"business_day": "2025-01-31"}),
                              ("/v1/sales", ["sales", -(2**63) - 1], {"business_day": "2025-01-31"}),
                              ("/v1/orders", ["orders", "0001-01-01T00:00:00+00:00", "not-a-uuid"], {}),
                              ("/v1/orders", ["orders", "2024-05-01T00:00:00+00:00", 5], {}),
                              ("/v1/orders", ["orders", 5, {"id": 1}], {})]:
        forged = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
        status, body, _ = await shop.orders.get(path, params={**params, "cursor": forged})
        assert_problem(status, body, 422, field="cursor")
