"""Housekeeping: what leaves after its window, what never does, and that writers never wait for it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import prometheus_client

from services.ecommerce.retention import passed_by_all
from shared.db import create_pool
from shared.housekeeping import IdempotencyRecords, OutboxEvents, prunable_prefix, prune, run_pass
from shared.outbox import publish_many
from tests.conftest import Api, ServiceFactory, assert_problem

HOUR = 3600.0


async def _records(pool: asyncpg.Pool, ages_s: dict[str, float]) -> None:
    """Idempotency records named after their keys, each `ages_s[key]` seconds old."""
    await pool.executemany(
        "INSERT INTO core.idempotency_keys (scope, key, request_hash, status, response, created_at)"
        " VALUES ('test|admin', $1, '\\x00', 200, '{}', now() - make_interval(secs => $2))",
        list(ages_s.items()))


async def _keys(pool: asyncpg.Pool) -> set[str]:
    return {r["key"] for r in await pool.fetch("SELECT key FROM core.idempotency_keys WHERE scope = 'test|admin'")}


async def _events(pool: asyncpg.Pool, ages_s: list[float], topic: str = "stock.changed") -> list[int]:
    """Events in position order (one transaction each), each `ages_s[i]` seconds old; their ids."""
    ids = []
    for age in ages_s:
        async with pool.acquire() as conn, conn.transaction():
            await publish_many(conn, [(topic, "TEE-M", {"sku": "TEE-M", "location_id": "store-a"})])
            ids.append(await conn.fetchval(
                "UPDATE core.events SET created_at = clock_timestamp() - make_interval(secs => $1)"
                " WHERE id = (SELECT max(id) FROM core.events) RETURNING id", age))
    return ids


async def _passed(pool: asyncpg.Pool, event_id: int) -> None:
    """Both durable consumers (projector, webhook fan-out) have passed `event_id`."""
    await pool.execute("UPDATE ecommerce.cursors SET txid = e.txid, event_id = e.id FROM core.events e"
                       " WHERE e.id = $1", event_id)


async def _remaining(pool: asyncpg.Pool, ids: list[int]) -> list[int]:
    return [r["id"] for r in await pool.fetch("SELECT id FROM core.events WHERE id = ANY($1) ORDER BY id", ids)]


def _outbox(retention_s: float = HOUR) -> OutboxEvents:
    return OutboxEvents(retention_s, passed_by_all)


# --- idempotency records ------------------------------------------------------------------------------


async def test_idempotency_records_past_the_window_leave_and_younger_ones_stay(pool: asyncpg.Pool) -> None:
    await _records(pool, {"old-1": 2 * HOUR, "old-2": HOUR + 60, "old-3": 30 * HOUR,
                          "young-1": HOUR - 60, "young-2": 1.0})
    # Batches of two: the pass goes on until nothing old is left.
    assert await prune(pool, IdempotencyRecords(HOUR), limit=2) == 3
    assert await _keys(pool) == {"young-1", "young-2"}
    assert await prune(pool, IdempotencyRecords(HOUR), limit=2) == 0


async def _movement(inventory: Api, key: str) -> tuple[int, Any, Any]:
    return await inventory.post("/v1/stock/movements", idem=key,
                                json={"sku": "TEE-M", "location_id": "store-a", "kind": "receipt", "qty": 5})


async def _on_hand(inventory: Api) -> int:
    status, body, _ = await inventory.get("/v1/stock/TEE-M")
    assert status == 200, body
    return sum(level["on_hand"] for level in body["locations"])


async def _inventory(service: ServiceFactory) -> Api:
    inventory = await service("inventory", idempotency_retention_s=HOUR)
    status, body, _ = await inventory.put("/v1/locations/store-a", json={
        "name": "Soho", "kind": "store", "lat": 51.5, "lon": -0.13, "ship": False, "pickup": True})
    assert status == 201, body
    status, body, _ = await inventory.put("/v1/skus/TEE-M", json={"name": "Tee", "price": "9.90", "currency": "EUR"})
    assert status == 201, body
    return inventory


async def test_a_retry_inside_the_window_replays_and_after_it_is_a_new_request(
        service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inventory = await _inventory(service)
    status, first, _ = await _movement(inventory, "receipt-1")
    assert status == 201, first
    # A minute before the window ends: the retry replays the first result and changes nothing.
    await pool.execute("UPDATE core.idempotency_keys SET created_at = now() - make_interval(secs => $1)"
                       " WHERE key = 'receipt-1'", HOUR - 60)
    assert await run_pass(pool, [IdempotencyRecords(HOUR)], 1000) == {"core.idempotency_keys": 0}
    status, again, resp = await _movement(inventory, "receipt-1")
    assert (status, again, resp.headers.get("Idempotent-Replayed")) == (201, first, "true")
    assert await _on_hand(inventory) == 5
    # A minute after: the record is gone, so the same key is a new request and the receipt counts again.
    await pool.execute("UPDATE core.idempotency_keys SET created_at = now() - make_interval(secs => $1)"
                       " WHERE key = 'receipt-1'", HOUR + 60)
    assert (await run_pass(pool, [IdempotencyRecords(HOUR)], 1000))["core.idempotency_keys"] >= 1
    status, late, resp = await _movement(inventory, "receipt-1")
    assert status == 201 and "Idempotent-Replayed" not in resp.headers, late
    assert late != first  # the level after a second receipt
    assert await _on_hand(inventory) == 10


# --- the outbox -------------------------------------------------------------------------------------


def test_only_a_leading_run_of_expired_events_is_prunable() -> None:
    assert prunable_prefix([(1, 1, True), (1, 2, True), (2, 3, False), (3, 4, True)]) == [(1, 1), (1, 2)]
    assert prunable_prefix([(1, 1, False), (2, 2, True)]) == []
    assert prunable_prefix([]) == []


async def test_old_events_leave_only_once_every_consumer_has_passed_them(pool: asyncpg.Pool) -> None:
    ids = await _events(pool, [5 * HOUR] * 6)
    await _passed(pool, ids[-1])
    # The projector (which reads stock events) lags behind: its cursor decides.
    await pool.execute("UPDATE ecommerce.cursors SET txid = e.txid, event_id = e.id FROM core.events e"
                       " WHERE e.id = $1 AND name = 'availability'", ids[2])
    assert await prune(pool, _outbox(), limit=2) == 3
    assert await _remaining(pool, ids) == ids[3:]  # old, but not yet applied to the projection
    horizon = await pool.fetchrow("SELECT event_id, max_pruned_id FROM core.outbox_horizon")
    assert (horizon["event_id"], horizon["max_pruned_id"]) == (ids[2], ids[2])


async def test_events_no_consumer_reads_leave_although_no_cursor_moved_over_them(pool: asyncpg.Pool) -> None:
    """A consumer moves its cursor on the events it reads only: order events (nobody's) and the ones
    before its next event have been passed all the same; its next event and all after it stay."""
    await pool.execute("UPDATE ecommerce.cursors SET txid = 0, event_id = 0")
    orders = await _events(pool, [5 * HOUR] * 3, topic="order.placed")
    stock = await _events(pool, [5 * HOUR] * 2)
    more_orders = await _events(pool, [5 * HOUR] * 2, topic="order.placed")
    assert await prune(pool, _outbox(), limit=100) == 3
    assert await _remaining(pool, orders + stock + more_orders) == stock + more_orders


async def test_events_inside_the_window_stay_even_when_every_consumer_has_passed_them(pool: asyncpg.Pool) -> None:
    ids = await _events(pool, [5 * HOUR, 5 * HOUR, HOUR - 60, 5 * HOUR])
    await _passed(pool, ids[-1])
    assert await prune(pool, _outbox(), limit=100) == 2
    # The young event keeps the old one after it: the outbox is whole after its oldest retained event.
    assert await _remaining(pool, ids) == ids[2:]


async def test_a_fresh_consumer_cursor_keeps_the_whole_outbox(pool: asyncpg.Pool) -> None:
    ids = await _events(pool, [5 * HOUR] * 3)
    await _passed(pool, ids[-1])
    # A projector that starts over (it rebuilds, then reads on) has passed none of these stock events.
    await pool.execute("UPDATE ecommerce.cursors SET txid = 0, event_id = 0 WHERE name = 'availability'")
    assert await prune(pool, _outbox(), limit=100) == 0
    assert await _remaining(pool, ids) == ids


# --- streams resumed across the window --------------------------------------------------------------


async def _open_stream(api: Api, last_event_id: str) -> tuple[int, Any]:
    resp = await api.client.get("/v1/events", headers={"Authorization": f"Bearer {api.key}",
                                                        "Last-Event-ID": last_event_id})
    try:
        if resp.status != 200:
            return resp.status, await resp.json(content_type=None)
        while (line := (await asyncio.wait_for(resp.content.readline(), 5)).decode()) and not line.startswith("id: "):
            pass
        return resp.status, int(line[4:])
    finally:
        resp.close()


async def test_a_stream_resumed_from_before_the_window_is_told_to_resync(
        service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inventory = await service("inventory")
    ids = await _events(pool, [5 * HOUR] * 4)
    assert await _open_stream(inventory, "0") == (200, ids[0])  # nothing pruned yet: 0 is the start
    await _passed(pool, ids[-1])
    await pool.execute("UPDATE core.events SET created_at = now() WHERE id = $1", ids[2])
    assert await prune(pool, _outbox(), limit=100) == 2
    for gone in ("0", str(ids[0]), str(ids[1])):
        status, body = await _open_stream(inventory, gone)
        assert_problem(status, body, 410, "stream-resync-required")
        assert "GET /v1/stock/{sku}" in body["snapshot"], body
    # Inside the window, resuming still loses nothing; an id never handed out is still a bad request.
    assert await _open_stream(inventory, str(ids[2])) == (200, ids[3])
    status, body = await _open_stream(inventory, str(ids[-1] + 1000))
    assert_problem(status, body, 422, "validation-failed", field="Last-Event-ID")
    status, body = await _open_stream(inventory, "9" * 19)
    assert_problem(status, body, 422, "validation-failed", field="Last-Event-ID")


# --- writers never wait ------------------------------------------------------------------------------


async def test_a_prune_batch_left_open_never_holds_up_a_writer(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    """Every job's batch runs in a transaction held open here while writers write the same tables:
    with a table lock (LOCK TABLE, TRUNCATE, a partition DETACH) each write would wait and time out."""
    inventory = await _inventory(service)
    await _records(pool, {f"old-{i}": 2 * HOUR for i in range(50)})
    ids = await _events(pool, [5 * HOUR] * 50)
    await pool.execute("UPDATE core.events SET created_at = now() - interval '5 hours'")  # the set-up's too
    await _passed(pool, ids[-1])
    async with pool.acquire() as pruner, pruner.transaction():
        assert (await IdempotencyRecords(HOUR).prune(pruner, 1000, 0)).deleted == 50
        assert (await _outbox().prune(pruner, 1000, 0)).deleted >= 50
        # The batch's row locks are held until it commits; meanwhile the writers go ahead.
        status, body, _ = await asyncio.wait_for(_movement(inventory, "during-prune"), 5)
        assert status == 201, body
        await asyncio.wait_for(_records(pool, {"written-during-prune": 0.0}), 5)
        await asyncio.wait_for(_events(pool, [0.0]), 5)
    assert "written-during-prune" in await _keys(pool)


async def test_the_pruner_skips_a_record_a_writer_holds_instead_of_waiting(pool: asyncpg.Pool) -> None:
    await _records(pool, {"held": 2 * HOUR, "free": 2 * HOUR})
    async with pool.acquire() as writer, writer.transaction():
        await writer.execute("SELECT 1 FROM core.idempotency_keys WHERE key = 'held' FOR UPDATE")
        assert await asyncio.wait_for(prune(pool, IdempotencyRecords(HOUR), limit=10), 5) == 1
    assert await _keys(pool) == {"held"}
    assert await prune(pool, IdempotencyRecords(HOUR), limit=10) == 1


async def test_one_pruner_at_a_time_a_second_leaves_the_pass_to_the_first(pool: asyncpg.Pool) -> None:
    await _records(pool, {"old": 2 * HOUR})
    async with pool.acquire() as first, first.transaction():
        assert await first.fetchval("SELECT pg_try_advisory_xact_lock(7277002, 1)")  # the job's batch lock
        assert await asyncio.wait_for(prune(pool, IdempotencyRecords(HOUR), limit=10), 5) == 0
    assert await prune(pool, IdempotencyRecords(HOUR), limit=10) == 1


# --- who may prune, and what it reports ---------------------------------------------------------------


async def test_the_ecommerce_role_prunes_the_outbox_and_no_other_role_may(
        pool: asyncpg.Pool, service_urls: dict[str, str]) -> None:
    ids = await _events(pool, [5 * HOUR] * 2)
    await _passed(pool, ids[-1])
    for service_name, url in service_urls.items():
        if service_name == "ecommerce":
            continue
        conn = await asyncpg.connect(url)
        try:
            for sql in ("DELETE FROM core.events WHERE false", "UPDATE core.outbox_horizon SET pruned_at = now()"):
                try:
                    await conn.execute(sql)
                except asyncpg.InsufficientPrivilegeError:
                    continue
                raise AssertionError(f"{service_name} may run {sql}")
        finally:
            await conn.close()
    ecommerce = await create_pool(service_urls["ecommerce"], min_size=1, max_size=2)
    try:
        assert await run_pass(ecommerce, [IdempotencyRecords(HOUR), _outbox()], 100) == {
            "core.idempotency_keys": 0, "core.events": 2}
    finally:
        await ecommerce.close()


async def test_pruned_rows_and_the_oldest_age_are_exported(pool: asyncpg.Pool) -> None:
    def pruned() -> float:
        return prometheus_client.REGISTRY.get_sample_value(
            "omnistock_housekeeping_pruned_rows_total", {"table": "core.idempotency_keys"}) or 0.0

    before = pruned()
    await _records(pool, {"old-a": 2 * HOUR, "old-b": 2 * HOUR, "young": 600.0})
    assert await prune(pool, IdempotencyRecords(HOUR), limit=10) == 2
    assert pruned() - before == 2
    age = prometheus_client.REGISTRY.get_sample_value(
        "omnistock_housekeeping_oldest_retained_age_seconds", {"table": "core.idempotency_keys"})
    assert age is not None and 590 <= age <= 700
