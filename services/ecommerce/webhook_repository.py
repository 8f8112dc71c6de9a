"""SQL of outbound webhooks: subscriptions, the delivery queue, and the attempt log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.ecommerce.domain import COALESCABLE_TOPIC
from services.ecommerce.repository import CursorState
from shared.db import Connection, Pool
from shared.outbox import Position

SUBSCRIPTION_COLUMNS = "id, url, events, delivery, created_by, created_at"
UNFINISHED = "('pending', 'sending')"
COALESCABLE = COALESCABLE_TOPIC

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
          s.url, s.secret, s.delivery
"""

# Fan a batch of messages into their queues and move the fan-out's cursor past their events, in one
# statement (one index probe per message for its queue's unfinished tail), on the condition that the
# cursor's version is still the one the batch was read at: every write joins `moved`, so a fan-out that
# lost the race (another replica's, during a change of leader) writes nothing and gets no 'moved' row.
# - the first message of a queue in this batch may fold into that tail (collapse_snapshots already folded
#   consecutive snapshots within the batch): into an untried pending snapshot, or, for a queue this
#   process holds in memory, into the held tail the dispatcher names (`fold_into`: not on the wire yet);
# - the others are inserted in array order (ids follow ORDER BY ord, which keeps each queue in event
#   order), leased to this process ('sending', its first attempt) when it may send them at once (nothing
#   of the queue is unfinished, or the unfinished tail is its own held one), else 'pending' behind what
#   is (a retry waiting, another replica's lease or queued message): the claim picks those up in order.
#   Holding a queue is not enough: another replica may have queued a message behind it meanwhile.
FAN_OUT = f"""
WITH q AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::int[], $7::bool[],
                         $8::bigint[], $9::bigint[]) WITH ORDINALITY
             AS q(subscription_id, event_id, topic, key, body, folded, first, held_tail, fold_into, ord)
), tails AS (
    -- ours: the queue's unfinished tail is this process's held tail, so what follows is its to send.
    -- target: the delivery the message may fold into (checked again under the row's lock below): our
    -- tail only if the dispatcher offered it (not on the wire), anyone else's only if untried.
    SELECT q.ord, t.id AS tail_id, t.id = q.held_tail AS ours,
           CASE WHEN q.first AND q.topic = '{COALESCABLE}'
                THEN CASE WHEN t.id = q.held_tail THEN q.fold_into ELSE t.id END END AS target
    FROM q LEFT JOIN LATERAL (
        SELECT id, status, attempts, topic FROM ecommerce.webhook_deliveries
        WHERE subscription_id = q.subscription_id AND key = q.key AND status IN {UNFINISHED}
        ORDER BY id DESC LIMIT 1) t ON true
), moved AS (
    UPDATE ecommerce.cursors SET txid = $14, event_id = $15, version = version + 1, updated_at = now()
    WHERE name = $13 AND version = $16
    RETURNING 1
), folded AS (
    UPDATE ecommerce.webhook_deliveries d
    SET event_id = q.event_id, body = q.body, coalesced = d.coalesced + 1 + q.folded
    FROM q JOIN tails USING (ord) JOIN moved ON true
    -- By primary key whatever the plan guesses for the join (as a join alone it scanned the queue).
    WHERE d.id = ANY(ARRAY(SELECT target FROM tails WHERE target IS NOT NULL)) AND d.id = tails.target
      AND d.topic = q.topic
      AND CASE WHEN tails.ours THEN d.status = 'sending' ELSE d.status = 'pending' AND d.attempts = 0 END
    RETURNING q.ord, d.id
), inserted AS (
    INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, coalesced,
                                             next_attempt_at, status, attempts, lease_until)
    SELECT q.subscription_id, q.event_id, q.topic, q.key, q.body, q.folded, now() + make_interval(secs => $10),
           CASE WHEN $12 AND (tails.tail_id IS NULL OR tails.ours) THEN 'sending' ELSE 'pending' END,
           CASE WHEN $12 AND (tails.tail_id IS NULL OR tails.ours) THEN 1 ELSE 0 END,
           CASE WHEN $12 AND (tails.tail_id IS NULL OR tails.ours) THEN now() + make_interval(secs => $11) END
    FROM q JOIN tails USING (ord) JOIN moved ON true
    WHERE q.ord NOT IN (SELECT ord FROM folded)
    ORDER BY q.ord
    RETURNING id, subscription_id, key, status, next_attempt_at
)
SELECT 'folded' AS outcome, f.ord, f.id, NULL::text AS status, NULL::timestamptz AS due FROM folded f
UNION ALL
SELECT 'inserted', NULL, i.id, i.status, i.next_attempt_at FROM inserted i
UNION ALL
SELECT 'moved', NULL, NULL, NULL, NULL FROM moved
ORDER BY id NULLS LAST
"""

# Settle many attempts' deliveries and log the attempts in one statement: delivered; back to the queue
# after retry_in seconds; or dead-lettered when retry_in is null. The row keeps its last attempt, and the
# attempt that delivered it is logged only there (webhook_attempt_log, migration 0006); every other
# attempt gets its row in webhook_attempts, including one whose lease ran out and was claimed again
# (attempts moved on: its delivery is left alone).
RECORD_OUTCOMES = """
WITH q AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::float8[], $5::int[], $6::text[],
                         $7::bool[], $8::float8[])
             AS q(delivery_id, attempt, started_at, duration_ms, status_code, error, delivered, retry_in)
), settled AS (
    UPDATE ecommerce.webhook_deliveries d
    SET status = CASE WHEN q.delivered THEN 'delivered' WHEN q.retry_in IS NULL THEN 'dead' ELSE 'pending' END,
        delivered_at = CASE WHEN q.delivered THEN now() ELSE d.delivered_at END,
        next_attempt_at = CASE WHEN q.delivered THEN d.next_attempt_at
                               ELSE now() + make_interval(secs => coalesce(q.retry_in, 0)) END,
        lease_until = NULL, last_status_code = q.status_code, last_started_at = q.started_at,
        last_duration_ms = q.duration_ms,
        last_error = CASE WHEN q.delivered THEN NULL ELSE coalesce(q.error, 'failed') END
    FROM q
    WHERE d.id = ANY($1::bigint[]) AND d.id = q.delivery_id AND d.status = 'sending' AND d.attempts = q.attempt
    RETURNING d.id, q.delivered
)
INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
SELECT delivery_id, attempt, started_at, duration_ms, status_code, error FROM q
WHERE NOT EXISTS (SELECT 1 FROM settled WHERE settled.id = q.delivery_id AND settled.delivered)
"""

# Leased messages this process will not send after all (the one before them failed and waits for its
# retry): back in the queue untried, where the claim takes them in order.
RELEASE = """
UPDATE ecommerce.webhook_deliveries SET status = 'pending', attempts = attempts - 1, lease_until = NULL
WHERE id = ANY($1::bigint[]) AND status = 'sending'
"""

# Keep the leases this process holds from running out: only those within $3 s of their end (most
# messages leave long before), so a held backlog is not rewritten on every renewal.
RENEW_LEASES = """
UPDATE ecommerce.webhook_deliveries SET lease_until = now() + make_interval(secs => $2)
WHERE id = ANY($1::bigint[]) AND status = 'sending' AND lease_until < now() + make_interval(secs => $3)
"""

# Per subscription: unfinished deliveries and the age of the oldest (what an operator watches).
BACKLOG = f"""
SELECT s.id AS subscription_id, count(d.id) AS unfinished,
       coalesce(extract(epoch FROM now() - min(d.created_at)), 0)::float8 AS oldest_s
FROM ecommerce.webhook_subscriptions s
LEFT JOIN ecommerce.webhook_deliveries d ON d.subscription_id = s.id AND d.status IN {UNFINISHED}
WHERE s.deleted_at IS NULL
GROUP BY s.id
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
    first: bool = True  # the first message of its queue in this batch (only it may meet the queue's tail)
    held_tail: int | None = None  # the newest delivery of the queue this process holds in memory
    fold_into: int | None = None  # the held, unsent snapshot the dispatcher lets it replace


async def create_subscription(conn: Connection, url: str, events: list[str], secret: str, created_by: str,
                              delivery: str = "each") -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO ecommerce.webhook_subscriptions (url, events, delivery, secret, created_by)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {SUBSCRIPTION_COLUMNS}",
        url, events, delivery, secret, created_by,
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

    Moves the fan-out cursor's version first, which takes its lock: fan-out's statement locks it before
    the deliveries it updates, so both take the two in one order (no deadlock), and a fan-out that read
    the subscription as live before this commits is refused instead of enqueueing behind the cancel."""
    await conn.execute("UPDATE ecommerce.cursors SET version = version + 1 WHERE name = 'webhooks'")
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


# What a fan-out reads before its batch, in one round trip and one snapshot: its cursor and the live
# subscriptions (one row each; one row with a NULL id when there are none).
CURSOR_AND_SUBSCRIPTIONS = """
SELECT c.txid, c.event_id, c.version, s.id, s.events, s.created_at, s.url, s.secret, s.delivery
FROM ecommerce.cursors c LEFT JOIN ecommerce.webhook_subscriptions s ON s.deleted_at IS NULL
WHERE c.name = $1
ORDER BY s.id
"""


async def cursor_and_subscriptions(conn: Connection, cursor: str) -> tuple[CursorState, list[asyncpg.Record]]:
    rows = await conn.fetch(CURSOR_AND_SUBSCRIPTIONS, cursor)
    first = rows[0]
    state = CursorState((first["txid"], first["event_id"]), first["version"])
    return state, [row for row in rows if row["id"] is not None]


async def fan_out_messages(db: Pool | Connection, messages: list[Message], delay_s: float, lease_s: float | None,
                           cursor: str, read: CursorState, to: Position) -> list[asyncpg.Record] | None:
    """Fold or enqueue `messages` (FAN_OUT), leasing what may leave at once for `lease_s` (None: lease
    nothing, queue everything), and move the fan-out's cursor to `to` if it is still as `read`; one row
    per message that changed a delivery: outcome 'folded' (ord: the message's 1-based position, id: the
    delivery it changed) or 'inserted' (id, status, due), in id order. None when another fan-out moved
    the cursor first (nothing written)."""
    rows = await db.fetch(
        FAN_OUT, [m.subscription_id for m in messages], [m.event_id for m in messages],
        [m.topic for m in messages], [m.key for m in messages], [m.body for m in messages],
        [m.folded for m in messages], [m.first for m in messages], [m.held_tail for m in messages],
        [m.fold_into for m in messages], delay_s, lease_s or 0.0, lease_s is not None, cursor, *to, read.version)
    if not rows or rows[-1]["outcome"] != "moved":
        return None
    return rows[:-1]


async def claim_due(conn: Connection, limit: int, lease_s: float) -> list[asyncpg.Record]:
    return await conn.fetch(CLAIM_DUE, limit, lease_s)


@dataclass(frozen=True)
class AttemptOutcome:
    """One finished attempt, to log and settle (record_outcomes)."""

    delivery_id: int
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    delivered: bool
    retry_in_s: float | None  # None and not delivered: dead-lettered


async def record_outcomes(db: Pool | Connection, outcomes: list[AttemptOutcome]) -> None:
    if outcomes:
        await db.execute(
            RECORD_OUTCOMES, [o.delivery_id for o in outcomes], [o.attempt for o in outcomes],
            [o.started_at for o in outcomes], [o.duration_ms for o in outcomes], [o.status_code for o in outcomes],
            [o.error for o in outcomes], [o.delivered for o in outcomes], [o.retry_in_s for o in outcomes])


async def release(conn: Connection, delivery_ids: list[int]) -> None:
    if delivery_ids:
        await conn.execute(RELEASE, delivery_ids)


async def renew_leases(db: Pool | Connection, delivery_ids: list[int], lease_s: float, within_s: float) -> None:
    """Extend to `lease_s` the leases of these deliveries that end within `within_s`."""
    if delivery_ids:
        await db.execute(RENEW_LEASES, delivery_ids, lease_s, within_s)


async def live_subscription_ids(db: Pool | Connection) -> set[int]:
    rows = await db.fetch("SELECT id FROM ecommerce.webhook_subscriptions WHERE deleted_at IS NULL")
    return {r["id"] for r in rows}


async def backlog(db: Pool | Connection) -> list[asyncpg.Record]:
    return await db.fetch(BACKLOG)


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
        "SELECT * FROM ecommerce.webhook_attempt_log WHERE delivery_id = $1 ORDER BY started_at, attempt",
        delivery_id,
    )


# Queue a finished delivery again, now, with a fresh budget of attempts. The log keeps the old ones: the
# attempt that delivered it, kept in the row until now, moves to webhook_attempts first (the row is locked
# before either happens, so two redeliveries cannot both move it).
REDELIVER = """
WITH finished AS (
    SELECT * FROM ecommerce.webhook_deliveries WHERE id = $1 AND status IN ('delivered', 'dead') FOR UPDATE
), kept AS (
    INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code)
    SELECT id, attempts, last_started_at, last_duration_ms, last_status_code FROM finished
    WHERE status = 'delivered' AND last_started_at IS NOT NULL
)
UPDATE ecommerce.webhook_deliveries d
SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL, last_started_at = NULL
FROM finished WHERE d.id = finished.id
RETURNING d.*
"""


async def redeliver(conn: Connection, delivery_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(REDELIVER, delivery_id)


# When the next message the claim could take is due (the earliest pending message that heads its queue),
# and whether any pending message waits blocked behind another. One merely queued behind another (due long
# ago, but blocked) is no reason to claim at once: the claim loop spun every 5 ms on those, an empty claim
# each time. Pending messages are few (the pending index).
NEXT_DUE = f"""
SELECT (SELECT greatest(0, extract(epoch FROM p.next_attempt_at - now()))::float8
        FROM ecommerce.webhook_deliveries p
        WHERE p.status = 'pending'
          AND NOT EXISTS (SELECT 1 FROM ecommerce.webhook_deliveries e
                          WHERE e.subscription_id = p.subscription_id AND e.key = p.key AND e.id < p.id
                            AND e.status IN {UNFINISHED})
        ORDER BY p.next_attempt_at
        LIMIT 1) AS due_in_s,
       EXISTS (SELECT 1 FROM ecommerce.webhook_deliveries WHERE status = 'pending') AS pending
"""


async def next_due(db: Pool | Connection) -> tuple[float | None, bool]:
    """Seconds until the next claimable message is due (None: none), and whether anything is pending."""
    row = await db.fetchrow(NEXT_DUE)
    return row["due_in_s"], row["pending"]


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
