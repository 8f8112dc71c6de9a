"""Group placement: orders submitted in the same moment go to the database as one group (one
transaction), each still all-or-nothing, with the Idempotency-Key semantics of the one-order path.

These tests hand orders to the app's PlacementGroup directly, all in one turn of the event loop, so
they are known to share a group; the HTTP tests (test_concurrency.py) cover the same path end to end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from services.orders import repository as repo
from services.orders.group_placement import PlacementGroup
from services.orders.routes import PLACEMENT_GROUP
from services.orders.schemas import OrderIn
from shared.auth import Principal
from shared.errors import Conflict, IdempotencyConflict, InsufficientStock, Problem
from shared.http.api import _canonical
from shared.http.keys import KEY_CACHE
from shared.idempotency import StoredResponse, request_hash
from tests.conftest import ADMIN_KEY
from tests.services.orders.conftest import Shop, order_body


@dataclass
class Buyer:
    """Places orders through the group as POST /v1/orders would, with the admin key."""

    group: PlacementGroup
    principal: Principal

    def place(self, key: str, **changes: Any) -> Any:
        body = OrderIn.model_validate(order_body(**changes))
        return self.group.place(body, self.principal, f"place_order|{self.principal.subject}", key,
                                request_hash(_canonical(body)))

    async def all_at_once(self, *orders: tuple[str, dict[str, Any]]) -> list[StoredResponse | BaseException]:
        """Submit in one turn of the loop: they go as one group."""
        return await asyncio.gather(*[self.place(key, **changes) for key, changes in orders], return_exceptions=True)


@pytest.fixture
async def buyer(shop: Shop) -> Buyer:
    app = shop.orders.client.app
    assert app is not None
    return Buyer(app[PLACEMENT_GROUP], await app[KEY_CACHE].authenticate(f"Bearer {ADMIN_KEY}"))


def lines(*items: tuple[str, int]) -> list[dict[str, Any]]:
    return [{"sku": sku, "qty": qty, "unit_price": "1.00"} for sku, qty in items]


async def test_one_group_places_the_orders_that_fit_and_refuses_only_the_short_ones(shop: Shop, buyer: Buyer) -> None:
    await shop.receive("TEE-M", "wh-1", 3)
    await shop.receive("CAP", "wh-1", 10)
    results = await buyer.all_at_once(
        ("a", {"lines": lines(("TEE-M", 2))}),
        ("b", {"lines": lines(("CAP", 1))}),
        ("c", {"lines": lines(("TEE-M", 2), ("CAP", 1))}),  # fits the snapshot, not what a and b left
        ("d", {"lines": lines(("JEANS-32", 1))}),  # no stock anywhere: refused before the lock
        ("e", {"lines": lines(("CAP", 1), ("TEE-M", 1))}),
    )
    assert buyer.group.stats["largest"] == 5
    a, b, c, d, e = results
    assert all(isinstance(r, StoredResponse) and r.status == 201 and not r.replayed for r in (a, b, e)), results
    assert isinstance(c, InsufficientStock) and isinstance(d, InsufficientStock), (c, d)
    assert d.extra["skus"] == ["JEANS-32"]
    assert await shop.level("TEE-M", "wh-1") == (3, 3)
    assert await shop.level("CAP", "wh-1") == (10, 2)
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.orders") == 3
    # refused orders leave no claim: the same key can be used again
    assert await shop.pool.fetchval("SELECT count(*) FROM core.idempotency_keys WHERE key IN ('c', 'd')") == 0
    # each movement's event shows the level right after it, in order
    reserved = await shop.pool.fetch(
        "SELECT (payload->>'reserved')::int AS r, (payload->>'reserved_delta')::int AS d FROM core.events"
        " WHERE topic = 'stock.changed' AND payload->>'sku' = 'TEE-M' AND payload->>'kind' = 'reservation'"
        " ORDER BY id")
    assert [(r["r"], r["d"]) for r in reserved] == [(2, 2), (3, 1)]
    assert await shop.pool.fetchval("SELECT count(*) FROM core.events WHERE topic = 'order.placed'") == 3
    for result in (a, b, e):
        assert isinstance(result, StoredResponse)
        status, body, _ = await shop.orders.get(f"/v1/orders/{result.body['id']}")
        assert status == 200 and body["created_at"] == result.body["created_at"]
        assert body["allocations"] == result.body["allocations"]
    await shop.consistent()


async def test_same_key_twice_in_one_group_makes_one_order(shop: Shop, buyer: Buyer) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    results = await buyer.all_at_once(
        ("k", {}), ("k", {}), ("other", {}), ("k", {"lines": lines(("TEE-M", 2))}), ("k", {}))
    first, copy, other, different, copy2 = results
    assert isinstance(first, StoredResponse) and first.status == 201 and not first.replayed
    for replay in (copy, copy2):
        assert isinstance(replay, StoredResponse) and replay.replayed and replay.body == first.body
    assert isinstance(other, StoredResponse) and other.body["id"] != first.body["id"]
    assert isinstance(different, IdempotencyConflict)
    assert await shop.level("TEE-M", "wh-1") == (10, 2)
    # and over HTTP later: the stored answer
    status, body, resp = await shop.place("k")
    assert status == 201 and body["id"] == first.body["id"] and resp.headers["Idempotent-Replayed"] == "true"


async def test_a_key_used_before_replays_in_a_group_even_when_the_stock_is_gone(shop: Shop, buyer: Buyer) -> None:
    await shop.receive("TEE-M", "wh-1", 1)
    status, placed, _ = await shop.place("early")
    assert status == 201
    results = await buyer.all_at_once(("early", {}), ("early", {"lines": lines(("TEE-M", 1), ("CAP", 1))}),
                                      ("late", {}))
    replay, different, late = results
    assert isinstance(replay, StoredResponse) and replay.replayed and replay.body["id"] == placed["id"]
    assert isinstance(different, IdempotencyConflict)
    assert isinstance(late, InsufficientStock)
    assert await shop.level("TEE-M", "wh-1") == (1, 1)


async def test_a_copy_waits_for_its_key_held_by_a_transaction_in_flight(shop: Shop, buyer: Buyer) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    body = OrderIn.model_validate(order_body())
    scope = f"place_order|{buyer.principal.subject}"
    async with shop.pool.acquire() as conn:
        holder = conn.transaction()
        await holder.start()
        await conn.execute("INSERT INTO core.idempotency_keys (scope, key, request_hash) VALUES ($1, 'held', $2)",
                           scope, request_hash(_canonical(body)))
        waiting = asyncio.ensure_future(buyer.place("held"))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the group waits on the claim, as a lone order would
        await holder.rollback()
    # the holder rolled back: the copy places the order itself
    result = await asyncio.wait_for(waiting, 10)
    assert result.status == 201 and not result.replayed
    assert await shop.level("TEE-M", "wh-1") == (5, 1)


async def test_a_failing_group_places_its_orders_one_by_one(shop: Shop, buyer: Buyer) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    # two orders with one external id in one group: the group's statement fails on the unique index
    results = await buyer.all_at_once(("x1", {"external_id": "shop-1"}), ("fine", {}),
                                      ("x2", {"external_id": "shop-1"}))
    assert buyer.group.stats["failed_groups"] == 1 and buyer.group.stats["alone"] == 3
    x1, fine, x2 = results
    assert isinstance(fine, StoredResponse) and fine.status == 201
    outcomes = sorted(type(r).__name__ for r in (x1, x2))
    assert outcomes == ["Conflict", "StoredResponse"], results
    refused = x1 if isinstance(x1, Problem) else x2
    assert isinstance(refused, Conflict) and refused.extra["field"] == "external_id"
    assert await shop.level("TEE-M", "wh-1") == (10, 2)
    await shop.consistent()


async def test_any_unexpected_group_failure_falls_back_to_one_by_one(shop: Shop, buyer: Buyer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    await shop.receive("TEE-M", "wh-1", 2)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the group path")

    monkeypatch.setattr(repo, "place_batch", broken)
    results = await buyer.all_at_once(("p1", {}), ("p2", {}), ("p3", {}))
    # placed alone, concurrently: any two of them get the two units
    assert buyer.group.stats["failed_groups"] == 1 and buyer.group.stats["alone"] == 3
    assert sorted(type(r).__name__ for r in results) == ["InsufficientStock", "StoredResponse", "StoredResponse"]
    assert await shop.level("TEE-M", "wh-1") == (2, 2)
    await shop.consistent()


async def test_an_order_that_lost_its_stock_at_the_lock_is_sourced_again(shop: Shop, buyer: Buyer) -> None:
    # The snapshot shows wh-1 nearest; by the time the group locks, someone took it: the order is
    # sourced again from a fresh snapshot (wh-2) instead of being refused.
    await shop.receive("TEE-M", "wh-1", 1)
    await shop.receive("TEE-M", "wh-2", 1)
    real_read = repo.read_stock
    taken = False

    async def read_then_someone_buys(*args: Any) -> repo.StockSnapshot:
        nonlocal taken
        snapshot = await real_read(*args)
        if not taken:
            taken = True
            await shop.pool.execute("SELECT inventory.apply_movement('TEE-M', 'wh-1', 'reservation', 0, 1)")
        return snapshot

    repo_read = pytest.MonkeyPatch()
    repo_read.setattr(repo, "read_stock", read_then_someone_buys)
    try:
        result = await buyer.place("raced")
    finally:
        repo_read.undo()
    assert isinstance(result, StoredResponse) and result.status == 201
    assert result.body["allocations"][0]["location_id"] == "wh-2"
    assert buyer.group.stats["groups"] == 2
