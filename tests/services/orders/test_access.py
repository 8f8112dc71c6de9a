"""The role matrix of services/orders/README.md."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop, order_body

MakeKey = Callable[..., Awaitable[str]]
PICKUP_A = {"type": "pickup", "location_id": "store-a"}


async def test_no_key_is_401(shop: Shop) -> None:
    for key in (None, "osk_unknown"):
        status, body, _ = await shop.orders.as_key(key).get("/v1/orders")
        assert_problem(status, body, 401, "unauthorized")


@pytest.mark.parametrize("role,channel,allowed", [
    ("admin", "online", True), ("ops", "online", True), ("shop", "online", True), ("shop", "store", False),
    ("store", "store", True), ("store", "online", False), ("finance", "online", False),
    ("auditor", "online", False),
])
async def test_who_places_orders(shop: Shop, make_key: MakeKey, role: str, channel: str, allowed: bool) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    api = shop.orders.as_key(await make_key(role, "store-a" if role == "store" else None))
    selling = {"selling_location_id": "store-a"} if channel == "store" and role != "store" else {}
    status, body, _ = await shop.place("k", api=api, channel=channel, **selling)
    assert status == (201 if allowed else 403), body


@pytest.mark.parametrize("role", ["admin", "ops", "store", "shop", "finance", "auditor"])
async def test_every_role_reads_orders_and_only_some_read_sales(shop: Shop, make_key: MakeKey, role: str) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    _, order, _ = await shop.place("k")
    api = shop.orders.as_key(await make_key(role, "store-b" if role == "store" else None))
    for path in ("/v1/orders", f"/v1/orders/{order['id']}"):
        status, body, _ = await api.get(path)
        assert status == 200, (path, body)
    status, body, _ = await api.get("/v1/sales", params={"business_day": "2025-01-31"})
    assert status == (200 if role in ("admin", "ops", "finance", "auditor") else 403), body


async def test_store_key_acts_only_on_orders_at_its_location(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    await shop.receive("TEE-M", "wh-1", 5)
    store_a = shop.orders.as_key(await make_key("store", "store-a"))
    store_b = shop.orders.as_key(await make_key("store", "store-b"))
    _, pickup, _ = await shop.place("pickup", fulfillment=PICKUP_A)
    _, shipped, _ = await shop.place("ship")  # from wh-1
    for action in ("pay", "cancel", "fulfill", "complete"):
        status, body, _ = await store_b.post(f"/v1/orders/{pickup['id']}/{action}")
        assert_problem(status, body, 403, "forbidden")
    status, body, _ = await store_a.post(f"/v1/orders/{shipped['id']}/fulfill")
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/pay")
    assert status == 200, body
    status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/fulfill")
    assert status == 200 and body["status"] == "fulfilled", body
    status, body, _ = await store_b.post(f"/v1/orders/{pickup['id']}/returns", idem="r",
                                          json={"lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "store-a"})
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await store_b.post(f"/v1/orders/{pickup['id']}/returns", idem="r",
                                          json={"lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "store-b"})
    assert status == 201, body  # any store takes a return back into its own stock
    assert await shop.level("TEE-M", "store-b") == (1, 0)
    status, body, _ = await store_a.post("/v1/orders", idem="x",
                                         json=order_body(channel="store", selling_location_id="store-b"))
    assert_problem(status, body, 403, "forbidden")


@pytest.mark.parametrize("role", ["shop", "finance", "auditor"])
async def test_roles_that_cannot_move_goods(shop: Shop, make_key: MakeKey, role: str) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    _, order, _ = await shop.place("k")
    api = shop.orders.as_key(await make_key(role))
    for action in ("fulfill", "complete"):
        status, body, _ = await api.post(f"/v1/orders/{order['id']}/{action}")
        assert_problem(status, body, 403, "forbidden")
    status, body, _ = await api.post(f"/v1/orders/{order['id']}/returns", idem="r",
                                     json={"lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "wh-1"})
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await api.post("/v1/orders/reservations/sweep")
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await api.post(f"/v1/orders/{order['id']}/cancel")
    assert status == (200 if role == "shop" else 403), body  # the shop may cancel its online orders
    assert await shop.level("TEE-M", "wh-1") == ((5, 0) if role == "shop" else (5, 1))
