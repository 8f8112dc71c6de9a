"""A pick-up order's stages in the store (preparing, ready): refused for other stores, other orders and
closed orders, recorded once per change with who marked it, the status untouched."""

from __future__ import annotations

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop
from tests.services.orders.test_access import PICKUP_A, MakeKey


async def test_pickup_stages_are_refused_where_they_do_not_apply(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    await shop.receive("TEE-M", "wh-1", 5)
    store_a = shop.orders.as_key(await make_key("store", "store-a"))
    store_b = shop.orders.as_key(await make_key("store", "store-b"))
    _, pickup, _ = await shop.place("p1", fulfillment=PICKUP_A)
    _, shipped, _ = await shop.place("s1")
    status, body, _ = await store_b.post(f"/v1/orders/{pickup['id']}/pickup-stage", json={"stage": "ready"})
    assert_problem(status, body, 403, "forbidden")  # only the pick-up store
    status, body, _ = await shop.orders.post(f"/v1/orders/{shipped['id']}/pickup-stage", json={"stage": "ready"})
    assert_problem(status, body, 409, "illegal-transition")  # shipped, not picked up
    status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/pickup-stage", json={"stage": "packed"})
    assert_problem(status, body, 422, field="stage")
    _, order, _ = await shop.orders.get(f"/v1/orders/{pickup['id']}")
    assert order["pickup_stage"] is None and [h["event"] for h in order["history"]] == ["placed"]
    assert (await store_a.post(f"/v1/orders/{pickup['id']}/cancel"))[0] == 200
    status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/pickup-stage", json={"stage": "ready"})
    assert_problem(status, body, 409, "illegal-transition")  # cancelled: nothing to prepare


async def test_stages_are_recorded_once_per_change_and_name_who(shop: Shop, make_key: MakeKey) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    store_a = shop.orders.as_key(await make_key("store", "store-a"))
    _, pickup, _ = await shop.place("p2", fulfillment=PICKUP_A)
    for stage in ("preparing", "preparing", "ready"):
        status, body, _ = await store_a.post(f"/v1/orders/{pickup['id']}/pickup-stage", json={"stage": stage})
        assert status == 200 and body["pickup_stage"] == stage and body["status"] == "placed", body
    events = [(h["event"], h["status"]) for h in body["history"]]
    assert events == [("placed", "placed"), ("pickup_preparing", "placed"), ("pickup_ready", "placed")]
    assert body["history"][-1]["actor"].startswith("store:")
    assert await shop.level("TEE-M", "store-a") == (5, 1)  # stock untouched: still reserved for the customer
