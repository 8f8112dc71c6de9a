"""Concurrency against the real database: no oversell, no deadlock, one order per key, exact expiry."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from services.orders.use_cases import expire_reservations
from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop


async def test_concurrent_buyers_of_one_sku_sell_exactly_what_there_is(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 25)
    results = await asyncio.gather(*[shop.place(f"buyer-{i}") for i in range(60)])
    statuses = [r[0] for r in results]
    assert statuses.count(201) == 25 and statuses.count(409) == 35, statuses
    assert await shop.level("TEE-M", "wh-1") == (25, 25)
    await shop.consistent()


async def test_concurrent_multi_line_orders_in_any_line_order_never_deadlock(shop: Shop) -> None:
    skus = ["TEE-M", "JEANS-32", "CAP"]
    for sku in skus:
        for location in ("wh-1", "wh-2", "store-b"):
            await shop.receive(sku, location, 30)
    rng = random.Random(3)

    def lines() -> list[dict[str, object]]:
        chosen = rng.sample(skus, rng.randint(2, 3))
        return [{"sku": s, "qty": rng.randint(1, 4), "unit_price": "1.00"} for s in chosen]

    bodies = [lines() for _ in range(80)]
    results = await asyncio.wait_for(asyncio.gather(*[
        shop.place(f"m-{i}", lines=body, fulfillment={"type": "ship"}) for i, body in enumerate(bodies)
    ]), timeout=60)
    assert {r[0] for r in results} <= {201, 409}, [r[1] for r in results if r[0] not in (201, 409)]
    placed = [r[1] for r in results if r[0] == 201]
    assert placed
    reserved = await shop.pool.fetchval("SELECT sum(reserved) FROM inventory.stock_levels")
    assert reserved == sum(a["qty"] for order in placed for a in order["allocations"])
    for body, (status, out, _) in zip(bodies, results, strict=True):
        if status == 409:
            assert_problem(status, out, 409, "insufficient-stock")
        else:
            assert {ln["sku"]: ln["qty"] for ln in body} == {
                sku: sum(a["qty"] for a in out["allocations"] if a["sku"] == sku) for sku in out_skus(out)}
    await shop.consistent()


def out_skus(order: dict[str, object]) -> set[str]:
    return {a["sku"] for a in order["allocations"]}  # type: ignore[attr-defined, index]


async def test_one_key_sent_twenty_times_at_once_makes_one_order(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 100)
    results = await asyncio.gather(*[shop.place("same-key") for _ in range(20)])
    assert {r[0] for r in results} == {201}
    assert len({r[1]["id"] for r in results}) == 1
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.orders") == 1
    assert await shop.level("TEE-M", "wh-1") == (100, 1)


async def test_sweeper_releases_exactly_the_expired_unpaid_reservations(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    await shop.receive("TEE-M", "store-a", 10)
    expiring = [(await shop.place(f"e{i}"))[1] for i in range(3)]
    paid = (await shop.place("paid"))[1]
    await shop.orders.post(f"/v1/orders/{paid['id']}/pay")
    partly = (await shop.place("partly", lines=[{"sku": "TEE-M", "qty": 2, "unit_price": "19.90"}]))[1]
    await shop.orders.post(f"/v1/orders/{partly['id']}/fulfill", json={"lines": [{"sku": "TEE-M", "qty": 1}]})
    store_order = (await shop.place("store", channel="store", selling_location_id="store-a",
                                    fulfillment={"type": "pickup", "location_id": "store-a"}))[1]
    assert store_order["reserved_until"] is not None  # a store order's clock is shorter (900 s by default)
    # move the clock of one more order far into the future: it must survive the sweep
    late = (await shop.place("late"))[1]
    await shop.pool.execute("UPDATE orders.orders SET reserved_until = now() + interval '2 hours' WHERE id = $1",
                            late["id"])
    assert await shop.level("TEE-M", "wh-1") == (9, 6)

    assert await expire_reservations(shop.pool) == 0  # nothing is due yet
    now = await shop.pool.fetchval("SELECT now() + $1::interval", timedelta(minutes=31))
    # three unpaid ones, the partly fulfilled and the store order
    assert await expire_reservations(shop.pool, now=now, batch=2) == 5
    assert await shop.level("TEE-M", "wh-1") == (9, 2)  # paid + late stay reserved
    assert await shop.level("TEE-M", "store-a") == (10, 0)
    for order in expiring:
        status, body, _ = await shop.orders.get(f"/v1/orders/{order['id']}")
        assert body["status"] == "cancelled" and body["history"][-1]["event"] == "expired"
    _, body, _ = await shop.orders.get(f"/v1/orders/{partly['id']}")
    assert body["status"] == "fulfilled" and body["lines"][0]["cancelled"] == 1
    status, body, _ = await shop.orders.post(f"/v1/orders/{expiring[0]['id']}/pay")
    assert_problem(status, body, 409, "illegal-transition")
    assert await expire_reservations(shop.pool, now=now) == 0
    releases = await shop.pool.fetchval("SELECT count(*) FROM inventory.stock_movements WHERE kind = 'release'")
    assert releases == 5
    assert await shop.pool.fetchval("SELECT count(*) FROM core.events WHERE topic = 'order.expired'") == 5
    await shop.consistent()


async def test_sweep_races_with_payment_and_cancel_without_drift(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 40)
    orders = [(await shop.place(f"o{i}"))[1] for i in range(30)]
    now = await shop.pool.fetchval("SELECT now() + interval '1 day'")
    actions = [expire_reservations(shop.pool, now=now, batch=5) for _ in range(3)]
    for i, order in enumerate(orders):
        action = ("pay", "cancel")[i % 2]
        actions.append(shop.orders.post(f"/v1/orders/{order['id']}/{action}"))
    results = await asyncio.gather(*actions)
    for status, body, _ in results[3:]:
        assert status in (200, 409), body
    paid = await shop.pool.fetchval("SELECT count(*) FROM orders.orders WHERE status = 'paid'")
    assert await shop.level("TEE-M", "wh-1") == (40, paid)
    await shop.consistent()
