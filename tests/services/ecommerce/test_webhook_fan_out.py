"""Fan-out of availability events into delivery queues, set-based, against the real tables.

Per (subscription, SKU) queue: event order kept, rapid snapshots collapsed within a batch, a snapshot
folded into the queue's untried tail from an earlier batch, never into one already being sent.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from services.ecommerce import webhook_repository as hooks
from services.ecommerce.webhooks import fan_out
from shared.db import transaction
from shared.outbox import publish_many

CHANGED, LOW = "availability.changed", "availability.low_stock"


async def publish(pool: asyncpg.Pool, *events: tuple[str, str, int]) -> list[int]:
    async with transaction(pool) as conn:
        await publish_many(conn, [(topic, sku, {"sku": sku, "available": n}) for topic, sku, n in events])
    return [n for _, _, n in events]


async def queues(pool: asyncpg.Pool) -> dict[tuple[int, str], list[tuple[str, int, int, str]]]:
    """(subscription, sku) -> [(topic, available, coalesced, status)] in queue (id) order."""
    found: dict[tuple[int, str], list[tuple[str, int, int, str]]] = {}
    for row in await pool.fetch("SELECT * FROM ecommerce.webhook_deliveries ORDER BY id"):
        data = orjson.loads(row["body"])
        assert data["id"] == row["event_id"] and data["topic"] == row["topic"]
        found.setdefault((row["subscription_id"], row["key"]), []).append(
            (row["topic"], data["data"]["available"], row["coalesced"], row["status"]))
    return found


async def test_fan_out_keeps_queue_order_and_folds_only_into_untried_tails(pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        both = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED, LOW], "s" * 16, "t"))["id"]
        snapshots = (await hooks.create_subscription(conn, "https://b.example/h", [CHANGED], "s" * 16, "t"))["id"]
    await publish(pool, (CHANGED, "X", 1), (CHANGED, "Y", 2))
    assert await fan_out(pool, coalesce_s=0.0) == 2
    # The dispatcher has claimed the first subscription's Y message: it is being sent.
    await pool.execute("UPDATE ecommerce.webhook_deliveries SET status = 'sending', attempts = 1"
                       " WHERE subscription_id = $1 AND key = 'Y'", both)

    await publish(pool, (CHANGED, "X", 3), (CHANGED, "X", 4), (LOW, "X", 5), (CHANGED, "X", 6), (CHANGED, "Y", 7))
    assert await fan_out(pool, coalesce_s=0.0) == 5
    assert await fan_out(pool, coalesce_s=0.0) == 0

    assert await queues(pool) == {
        # X: 3 and 4 collapse; 4 folds into the untried tail (1); the low-stock message and 6 follow it.
        (both, "X"): [(CHANGED, 4, 2, "pending"), (LOW, 5, 0, "pending"), (CHANGED, 6, 0, "pending")],
        # Y: the tail is being sent, so 7 queues behind it instead of changing what is on the wire.
        (both, "Y"): [(CHANGED, 2, 0, "sending"), (CHANGED, 7, 0, "pending")],
        # Snapshots only: 3, 4 and 6 collapse (no other message of X between them) and fold into 1.
        (snapshots, "X"): [(CHANGED, 6, 3, "pending")],
        (snapshots, "Y"): [(CHANGED, 7, 1, "pending")],
    }


async def test_a_subscription_gets_only_events_from_after_it_was_created(pool: asyncpg.Pool) -> None:
    await publish(pool, (CHANGED, "X", 1))
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED], "s" * 16, "t"))["id"]
    await publish(pool, (CHANGED, "X", 2), (LOW, "X", 3))
    assert await fan_out(pool, coalesce_s=0.0) == 3
    assert await queues(pool) == {(sub, "X"): [(CHANGED, 2, 0, "pending")]}


async def test_a_fan_out_whose_cursor_another_moved_first_writes_nothing(pool: asyncpg.Pool, monkeypatch) -> None:
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED], "s" * 16, "t"))["id"]
    await publish(pool, (CHANGED, "X", 1), (CHANGED, "Y", 2))
    read_subscriptions, rival = hooks.cursor_and_subscriptions, []

    async def rival_gets_there_first(conn: asyncpg.Connection, cursor: str) -> tuple[Any, list[asyncpg.Record]]:
        rows = await read_subscriptions(conn, cursor)
        if not rival:  # between this fan-out's reads and its write, another replica's fans out the batch
            rival.append(None)
            rival[0] = await fan_out(pool, coalesce_s=0.0)
        return rows

    monkeypatch.setattr(hooks, "cursor_and_subscriptions", rival_gets_there_first)
    assert await fan_out(pool, coalesce_s=0.0) is None
    assert rival == [2]
    # Enqueued once (the rival's), not twice; the cursor is past both.
    assert await queues(pool) == {(sub, "X"): [(CHANGED, 1, 0, "pending")], (sub, "Y"): [(CHANGED, 2, 0, "pending")]}
    assert await fan_out(pool, coalesce_s=0.0) == 0


async def test_a_subscription_deleted_while_a_fan_out_reads_gets_nothing_enqueued(pool: asyncpg.Pool,
                                                                                  monkeypatch) -> None:
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED], "s" * 16, "t"))["id"]
        kept = (await hooks.create_subscription(conn, "https://b.example/h", [CHANGED], "s" * 16, "t"))["id"]
    await publish(pool, (CHANGED, "X", 1))
    read_subscriptions = hooks.cursor_and_subscriptions

    async def deleted_after_reading(conn: asyncpg.Connection, cursor: str) -> tuple[Any, list[asyncpg.Record]]:
        rows = await read_subscriptions(conn, cursor)  # the fan-out sees the subscription live...
        async with transaction(pool) as other:  # ...and it is deleted before the fan-out writes
            await hooks.delete_subscription(other, sub)
        return rows

    monkeypatch.setattr(hooks, "cursor_and_subscriptions", deleted_after_reading)
    assert await fan_out(pool, coalesce_s=0.0) is None  # refused: the delete moved the cursor's version
    monkeypatch.undo()
    assert await fan_out(pool, coalesce_s=0.0) == 1  # read again: only the live subscription gets it
    assert await queues(pool) == {(kept, "X"): [(CHANGED, 1, 0, "pending")]}
