"""A store key acts only on units at its own location, pays only for orders sold or picked up there, and
lists only orders that involve it (issue 11, item 8). Every refusal leaves stock and the order as they were."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tests.conftest import Api, assert_problem
from tests.services.orders.conftest import LONDON, Shop

MakeKey = Callable[..., Awaitable[str]]
# TEE-M only at store-b, CAP only at wh-1: a ship order takes one line from each (both ship-enabled).
SPLIT_LINES = [{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}, {"sku": "CAP", "qty": 1, "unit_price": "9.50"}]


async def split_order(shop: Shop, key: str = "split") -> dict[str, Any]:
    await shop.receive("TEE-M", "store-b", 5)
    await shop.receive("CAP", "wh-1", 5)
    status, order, _ = await shop.place(key, lines=SPLIT_LINES,
                                        fulfillment={"type": "ship", "ship_to": LONDON})
    assert status == 201, order
    assert {(a["sku"], a["location_id"]) for a in order["allocations"]} == {("TEE-M", "store-b"), ("CAP", "wh-1")}
    return order


async def store(shop: Shop, make_key: MakeKey, location_id: str) -> Api:
    return shop.orders.as_key(await make_key("store", location_id))


async def unchanged(shop: Shop, order: dict[str, Any]) -> None:
    assert await shop.level("TEE-M", "store-b") == (5, 1)
    assert await shop.level("CAP", "wh-1") == (5, 1)
    _, now, _ = await shop.orders.get(f"/v1/orders/{order['id']}")
    assert now["status"] == "placed" and now["paid_at"] is None and len(now["history"]) == 1


async def test_a_store_may_not_pay_for_an_online_order_because_one_unit_sits_there(
        shop: Shop, make_key: MakeKey) -> None:
    order = await split_order(shop)
    store_b = await store(shop, make_key, "store-b")
    status, body, _ = await store_b.post(f"/v1/orders/{order['id']}/pay")
    assert_problem(status, body, 403, "forbidden")
    await unchanged(shop, order)


async def test_a_store_may_not_cancel_units_at_another_location_by_naming_it(shop: Shop, make_key: MakeKey) -> None:
    order = await split_order(shop)
    store_b = await store(shop, make_key, "store-b")
    status, body, _ = await store_b.post(f"/v1/orders/{order['id']}/cancel",
                                         json={"lines": [{"sku": "CAP", "qty": 1, "location_id": "wh-1"}]})
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await store_b.post(f"/v1/orders/{order['id']}/cancel",
                                         json={"lines": [{"sku": "CAP", "qty": 1}]})
    assert_problem(status, body, 409, "illegal-transition")  # no CAP is open at store-b
    await unchanged(shop, order)


async def test_a_whole_order_cancel_by_a_store_releases_only_its_own_units(shop: Shop, make_key: MakeKey) -> None:
    order = await split_order(shop)
    store_b = await store(shop, make_key, "store-b")
    status, body, _ = await store_b.post(f"/v1/orders/{order['id']}/cancel")
    assert status == 200, body
    assert body["status"] == "placed" and body["history"][-1]["event"] == "partially_cancelled"
    assert await shop.level("TEE-M", "store-b") == (5, 0)
    assert await shop.level("CAP", "wh-1") == (5, 1)  # wh-1's unit stays held for the customer
    status, body, _ = await store_b.post(f"/v1/orders/{order['id']}/cancel")
    assert_problem(status, body, 409, "illegal-transition")  # nothing of it is open at store-b any more
    await shop.consistent()


async def test_a_store_not_involved_may_not_cancel_fulfil_or_complete(shop: Shop, make_key: MakeKey) -> None:
    order = await split_order(shop)
    store_a = await store(shop, make_key, "store-a")
    for action in ("pay", "cancel", "fulfill", "complete"):
        status, body, _ = await store_a.post(f"/v1/orders/{order['id']}/{action}")
        assert_problem(status, body, 403, "forbidden")
    await unchanged(shop, order)


async def test_a_store_pays_for_orders_picked_up_or_sold_there(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    await shop.receive("TEE-M", "wh-1", 5)
    store_a = await store(shop, make_key, "store-a")
    _, pickup, _ = await shop.place("pickup", fulfillment={"type": "pickup", "location_id": "store-a"})
    status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/pay")
    assert status == 200 and body["status"] == "paid", body
    # Endless aisle: sold at store-a, shipped from wh-1. The till takes the money; the stock is wh-1's.
    _, aisle, _ = await shop.place("aisle", api=store_a, channel="store", selling_location_id="store-a",
                                   fulfillment={"type": "ship", "location_id": "wh-1", "ship_to": LONDON})
    assert aisle["allocations"][0]["location_id"] == "wh-1"
    status, body, _ = await store_a.post(f"/v1/orders/{aisle['id']}/pay")
    assert status == 200, body
    for action in ("fulfill", "cancel"):
        status, body, _ = await store_a.post(f"/v1/orders/{aisle['id']}/{action}")
        assert_problem(status, body, 403, "forbidden")
    assert await shop.level("TEE-M", "wh-1") == (5, 1)


async def test_a_store_lists_only_orders_that_involve_it(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    await shop.receive("TEE-M", "wh-1", 5)
    _, at_a, _ = await shop.place("a", fulfillment={"type": "pickup", "location_id": "store-a"})
    _, at_wh, _ = await shop.place("wh", fulfillment={"type": "ship", "location_id": "wh-1", "ship_to": LONDON})
    store_a = await store(shop, make_key, "store-a")
    status, body, _ = await store_a.get("/v1/orders")
    assert status == 200 and [o["id"] for o in body["items"]] == [at_a["id"]], body
    status, body, _ = await store_a.get("/v1/orders", params={"location_id": "store-a"})
    assert status == 200 and [o["id"] for o in body["items"]] == [at_a["id"]], body
    status, body, _ = await store_a.get("/v1/orders", params={"location_id": "wh-1"})
    assert_problem(status, body, 403, "forbidden")
    # An order by its id (the customer's receipt) stays readable at any store: returns are taken anywhere.
    status, body, _ = await store_a.get(f"/v1/orders/{at_wh['id']}")
    assert status == 200 and body["id"] == at_wh["id"], body
    _, everything, _ = await shop.orders.get("/v1/orders")
    assert {o["id"] for o in everything["items"]} == {at_a["id"], at_wh["id"]}
