"""SQL of outbound webhooks: subscriptions, the delivery queue, and the attempt log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import Connection, Pool

SUBSCRIPTION_COLUMNS = "id, url, events, created_by, created_at"
UNFINISHED = "('pending', 'sending')"

# The oldest unfinished delivery of each (subscription, key) queue that is due, or whose sender's
# lease ran out (a crashed dispatcher: at-least-once). SKIP LOCKED lets replicas claim disjoint rows;
# the NOT EXISTS keeps a later message of one SKU from overtaking an earlier one. The ids are claimed
# as an array so the UPDATE finds them by primary key whatever the plan guesses for LIMIT $1 (as a
# joined CTE, the generic plan hashed it against a scan of every delivery ever made).
CLAIM_DUE = f"""
UPDATE ecommerce.webhook_deliveries d
SET status = 'sending', attempts = d.attempts + 1, lease_until = now() + make_interval(secs => $2)
FROM ecommerce.webhook_subscriptions s
WHERE s.id = d.subscription_id
  AND d.id = ANY(ARRAY(
    SELECT due.id FROM ecommerce.webhook_deliveries due
    WHERE ((due.status = 'pending' AND due.next_attempt_at <= now())
           OR (due.status = 'sending' AND due.lease_until < now()))
      AND NOT EXISTS (
          SELECT 1 FROM ecommerce.webhook_deliveries e
          WHERE e.subscription_id = due.subscription_id AND e.key = due.key AND e.id < due.id
            AND e.status IN {UNFINISHED})
    ORDER BY due.next_attempt_at, due.id
    LIMIT $1
    FOR UPDATE OF due SKIP LOCKED))
RETURNING d.id, d.subscription_id, d.event_id, d.topic, d.key, d.body, d.attempts, d.coalesced,
          s.url, s.secret
"""

# Fold newer snapshots, one per (subscription, key), each into the tail of its queue when that tail is
# a snapshot not tried yet. Returns the queues it folded into; the other snapshots are enqueued.
COALESCE_INTO_TAILS = f"""
UPDATE ecommerce.webhook_deliveries d
SET event_id = q.event_id, body = q.body, coalesced = d.coalesced + 1 + q.folded
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::int[])
     AS q(subscription_id, key, topic, event_id, body, folded)
WHERE d.id = (SELECT max(id) FROM ecommerce.webhook_deliveries
              WHERE subscription_id = q.subscription_id AND key = q.key AND status IN {UNFINISHED})
  AND d.status = 'pending' AND d.attempts = 0 AND d.topic = q.topic
RETURNING d.subscription_id, d.key
"""

# Ids follow the array order (ORDER BY ord), which keeps each (subscription, key) queue in event order.
RECORD_OUTCOME = """
WITH logged AS (
    INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
    VALUES ($1, $2, $3, $4, $5, $6)
)
UPDATE ecommerce.webhook_deliveries
SET status = CASE WHEN $7 THEN 'delivered' WHEN $8::float8 IS NULL THEN 'dead' ELSE 'pending' END,
    delivered_at = CASE WHEN $7 THEN now() ELSE delivered_at END,
    next_attempt_at = CASE WHEN $7 THEN next_attempt_at
                           ELSE now() + make_interval(secs => coalesce($8::float8, 0)) END,
    lease_until = NULL, last_status_code = $5, last_error = CASE WHEN $7 THEN NULL ELSE $9 END
WHERE id = $1 AND status = 'sending' AND attempts = $2
"""

ENQUEUE_MANY = """
INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, coalesced, next_attempt_at)
SELECT q.subscription_id, q.event_id, q.topic, q.key, q.body, q.folded, now() + make_interval(secs => $7)
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::int[]) WITH ORDINALITY
     AS q(subscription_id, event_id, topic, key, body, folded, ord)
ORDER BY q.ord
"""


@dataclass(frozen=True)
class Message:
    """One delivery to enqueue (or to fold into the tail of its queue)."""

    subscription_id: int
    event_id: int
    topic: str
    key: str
    body: bytes
    folded: int  # earlier snapshots of this batch it replaces


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


async def coalesce_into_tails(conn: Connection, heads: list[Message]) -> set[tuple[int, str]]:
    """Fold each message into its queue's tail where allowed; the (subscription, key) queues folded into."""
    if not heads:
        return set()
    rows = await conn.fetch(COALESCE_INTO_TAILS, [m.subscription_id for m in heads], [m.key for m in heads],
                            [m.topic for m in heads], [m.event_id for m in heads], [m.body for m in heads],
                            [m.folded for m in heads])
    return {(r["subscription_id"], r["key"]) for r in rows}


async def enqueue_many(conn: Connection, messages: list[Message], delay_s: float) -> None:
    """Queue `messages` in their order, each due after `delay_s` (the coalescing window)."""
    if messages:
        await conn.execute(ENQUEUE_MANY, [m.subscription_id for m in messages], [m.event_id for m in messages],
                           [m.topic for m in messages], [m.key for m in messages], [m.body for m in messages],
                           [m.folded for m in messages], delay_s)


async def claim_due(conn: Connection, limit: int, lease_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(CLAIM_DUE, limit, lease_s)


async def record_outcome(db: Pool | Connection, delivery_id: int, attempt: int, started_at: datetime,
                         duration_ms: float, status_code: int | None, error: str | None, delivered: bool,
                         retry_in_s: float | None) -> None:
    """Log the attempt and settle the delivery in one statement: delivered; or back to the queue after
    `retry_in_s`; or dead-lettered when that is None. A lease that ran out and was re-claimed (attempts
    moved on) is left alone; its attempt is still logged."""
    await db.execute(RECORD_OUTCOME, delivery_id, attempt, started_at, duration_ms, status_code, error,
                     delivered, retry_in_s, error or "failed")


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


# --- retention (services/ecommerce/retention.py) ----------------------------------------------------

# One chunk of the delivery log in id order after $1: where it ends, and whether it reached rows too
# young for any window (younger than $3 s), past which nothing can be old enough: the walk stops there.
SCAN_DELIVERIES = """
SELECT max(id) AS last, coalesce(bool_or(created_at >= now() - make_interval(secs => $3)), false) AS young
FROM (SELECT id, created_at FROM ecommerce.webhook_deliveries WHERE id > $1 ORDER BY id LIMIT $2) AS chunk
"""

# The finished deliveries of ids ($1, $2] past their window, with their attempt logs. What finished them
# dates them: delivered_at, the last attempt of a dead one (next_attempt_at is set to it), the creation
# of a cancelled one. Pending and sending deliveries are never touched; SKIP LOCKED leaves any row a
# dispatcher or a redelivery holds for the next pass.
PRUNE_DELIVERIES = """
WITH doomed AS (
    SELECT id FROM ecommerce.webhook_deliveries
    WHERE id > $1 AND id <= $2
      AND ((status = 'delivered' AND delivered_at < now() - make_interval(secs => $3))
           OR (status = 'cancelled' AND created_at < now() - make_interval(secs => $3))
           OR (status = 'dead' AND next_attempt_at < now() - make_interval(secs => $4)))
    FOR UPDATE SKIP LOCKED
), attempts AS (
    DELETE FROM ecommerce.webhook_attempts a USING doomed WHERE a.delivery_id = doomed.id
)
DELETE FROM ecommerce.webhook_deliveries d USING doomed WHERE d.id = doomed.id
"""


async def scan_deliveries(conn: Connection, after: int, limit: int, young_s: float) -> tuple[int | None, bool]:
    row = await conn.fetchrow(SCAN_DELIVERIES, after, limit, young_s)
    return row["last"], row["young"]


async def prune_deliveries(conn: Connection, after: int, through: int, delivered_s: float, dead_s: float) -> int:
    """Delete the finished deliveries of ids (after, through] past their windows; how many."""
    return int((await conn.execute(PRUNE_DELIVERIES, after, through, delivered_s, dead_s)).split()[-1])


async def oldest_delivery_age_s(db: Pool | Connection) -> float | None:
    return await db.fetchval(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM ecommerce.webhook_deliveries ORDER BY id LIMIT 1")
