"""SQL of outbound webhooks: subscriptions, the delivery queue, and the attempt log."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.db import Connection, Pool

SUBSCRIPTION_COLUMNS = "id, url, events, created_by, created_at"
UNFINISHED = "('pending', 'sending')"

# The oldest unfinished delivery of each (subscription, key) queue that is due, or whose sender's
# lease ran out (a crashed dispatcher: at-least-once). SKIP LOCKED lets replicas claim disjoint rows;
# the NOT EXISTS keeps a later message of one SKU from overtaking an earlier one.
CLAIM_DUE = f"""
WITH due AS (
    SELECT d.id FROM ecommerce.webhook_deliveries d
    WHERE ((d.status = 'pending' AND d.next_attempt_at <= now())
           OR (d.status = 'sending' AND d.lease_until < now()))
      AND NOT EXISTS (
          SELECT 1 FROM ecommerce.webhook_deliveries e
          WHERE e.subscription_id = d.subscription_id AND e.key = d.key AND e.id < d.id
            AND e.status IN {UNFINISHED})
    ORDER BY d.next_attempt_at, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE ecommerce.webhook_deliveries d
SET status = 'sending', attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $2)
FROM due, ecommerce.webhook_subscriptions s
WHERE d.id = due.id AND s.id = d.subscription_id
RETURNING d.id, d.subscription_id, d.event_id, d.topic, d.key, d.body, d.attempts, d.coalesced,
          s.url, s.secret
"""

# Fold a newer snapshot into the tail of its queue when that tail has not been tried yet.
COALESCE_INTO_TAIL = f"""
UPDATE ecommerce.webhook_deliveries d
SET event_id = $4, body = $5, coalesced = d.coalesced + 1 + $6
WHERE d.id = (SELECT max(id) FROM ecommerce.webhook_deliveries
              WHERE subscription_id = $1 AND key = $2 AND status IN {UNFINISHED})
  AND d.status = 'pending' AND d.attempts = 0 AND d.topic = $3
RETURNING d.id
"""

ENQUEUE = """
INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, coalesced, next_attempt_at)
VALUES ($1, $2, $3, $4, $5, $7, now() + make_interval(secs => $6))
RETURNING id
"""


async def create_subscription(conn: Connection, url: str, events: list[str], secret: str,
                              created_by: str) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO ecommerce.webhook_subscriptions (url, events, secret, created_by) VALUES ($1, $2, $3, $4)"
        f" RETURNING {SUBSCRIPTION_COLUMNS}",
        url, events, secret, created_by,
    )


async def list_subscriptions(db: Pool | Connection) -> list[asyncpg.Record]:
    return await db.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM ecommerce.webhook_subscriptions WHERE deleted_at IS NULL ORDER BY id"
    )


async def get_subscription(db: Pool | Connection, subscription_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM ecommerce.webhook_subscriptions WHERE id = $1 AND deleted_at IS NULL",
        subscription_id,
    )


async def delete_subscription(conn: Connection, subscription_id: int) -> asyncpg.Record | None:
    """Soft-delete (the delivery log stays readable) and cancel what was still waiting to be sent.

    Takes the fan-out cursor's lock first: fan-out updates the same deliveries in another order, and
    without one order between the two they deadlock."""
    await conn.execute("SELECT 1 FROM ecommerce.cursors WHERE name = 'webhooks' FOR UPDATE")
    row = await conn.fetchrow(
        "UPDATE ecommerce.webhook_subscriptions SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL"
        f" RETURNING {SUBSCRIPTION_COLUMNS}",
        subscription_id,
    )
    if row is not None:
        await conn.execute(
            "UPDATE ecommerce.webhook_deliveries SET status = 'cancelled', last_error = 'subscription deleted'"
            f" WHERE subscription_id = $1 AND status IN {UNFINISHED}",
            subscription_id,
        )
    return row


async def live_subscriptions(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, events, created_at FROM ecommerce.webhook_subscriptions WHERE deleted_at IS NULL ORDER BY id"
    )


async def coalesce_into_tail(conn: Connection, subscription_id: int, key: str, topic: str, event_id: int,
                             body: bytes, folded: int) -> bool:
    return await conn.fetchval(COALESCE_INTO_TAIL, subscription_id, key, topic, event_id, body, folded) is not None


async def enqueue(conn: Connection, subscription_id: int, event_id: int, topic: str, key: str, body: bytes,
                  delay_s: float, folded: int) -> int:
    return await conn.fetchval(ENQUEUE, subscription_id, event_id, topic, key, body, delay_s, folded)


async def claim_due(conn: Connection, limit: int, lease_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(CLAIM_DUE, limit, lease_s)


async def record_attempt(conn: Connection, delivery_id: int, attempt: int, started_at: datetime,
                         duration_ms: float, status_code: int | None, error: str | None) -> None:
    await conn.execute(
        "INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        delivery_id, attempt, started_at, duration_ms, status_code, error,
    )


async def mark_delivered(conn: Connection, delivery_id: int, attempt: int, status_code: int) -> None:
    await conn.execute(
        "UPDATE ecommerce.webhook_deliveries SET status = 'delivered', delivered_at = now(), lease_until = NULL,"
        " last_status_code = $3, last_error = NULL WHERE id = $1 AND status = 'sending' AND attempts = $2",
        delivery_id, attempt, status_code,
    )


async def mark_failed(conn: Connection, delivery_id: int, attempt: int, status_code: int | None, error: str,
                      retry_in_s: float | None) -> None:
    """Back to the queue after `retry_in_s`, or dead-lettered when it is None."""
    await conn.execute(
        "UPDATE ecommerce.webhook_deliveries"
        " SET status = CASE WHEN $5::float8 IS NULL THEN 'dead' ELSE 'pending' END,"
        "     next_attempt_at = now() + make_interval(secs => coalesce($5::float8, 0)), lease_until = NULL,"
        "     last_status_code = $3, last_error = $4"
        " WHERE id = $1 AND status = 'sending' AND attempts = $2",
        delivery_id, attempt, status_code, error, retry_in_s,
    )


async def list_deliveries(db: Pool | Connection, subscription_id: int, status: str | None, before: int | None,
                          limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM ecommerce.webhook_deliveries WHERE subscription_id = $1"
        " AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR id < $3)"
        " ORDER BY id DESC LIMIT $4",
        subscription_id, status, before, limit,
    )


async def get_delivery(db: Pool | Connection, subscription_id: int, delivery_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT * FROM ecommerce.webhook_deliveries WHERE id = $1 AND subscription_id = $2",
        delivery_id, subscription_id,
    )


async def attempts_of(db: Pool | Connection, delivery_id: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM ecommerce.webhook_attempts WHERE delivery_id = $1 ORDER BY id", delivery_id
    )


async def redeliver(conn: Connection, delivery_id: int) -> asyncpg.Record | None:
    """Queue a finished delivery again, now, with a fresh budget of attempts (the log keeps the old ones)."""
    return await conn.fetchrow(
        "UPDATE ecommerce.webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),"
        " lease_until = NULL WHERE id = $1 AND status IN ('delivered', 'dead') RETURNING *",
        delivery_id,
    )


async def next_due_in_s(db: Pool | Connection) -> float | None:
    return await db.fetchval(
        "SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8"
        " FROM ecommerce.webhook_deliveries WHERE status = 'pending'"
    )
