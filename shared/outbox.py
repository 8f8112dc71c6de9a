"""Writing and reading the outbox (core.events).

Writers call `publish` inside the transaction that makes the change, so an event exists exactly when
the change does. Readers page through `read_after` by position (txid, id): see 0001_core.sql for why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from shared.db import Connection, Pool

Position = tuple[int, int]  # (txid, id)
START: Position = (0, 0)
MAX_EVENT_ID = 2**63 - 1
END: Position = (MAX_EVENT_ID, MAX_EVENT_ID)  # after every event

READ_AFTER_SQL = """
SELECT id, txid, topic, key, payload, created_at
FROM core.events
WHERE (txid, id) > ($1, $2)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
  AND ($4::text[] IS NULL OR split_part(topic, '.', 1) = ANY($4::text[]))
ORDER BY txid, id
LIMIT $3
"""


class Event(NamedTuple):
    """One outbox event. A named tuple, not a frozen dataclass: hubs build thousands a second, and a
    frozen dataclass sets each field through object.__setattr__ (py-spy: 2 % of e-commerce's CPU)."""

    id: int
    txid: int
    topic: str
    key: str
    payload: dict[str, Any]
    created_at: datetime

    @property
    def position(self) -> Position:
        return (self.txid, self.id)


async def publish(conn: Connection, topic: str, key: str, payload: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO core.events (topic, key, payload) VALUES ($1, $2, $3)", topic, key, payload
    )


async def publish_many(conn: Connection, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    if events:
        await conn.execute(
            "INSERT INTO core.events (topic, key, payload) SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])",
            [e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
        )


async def read_after(pool: Pool | Connection, position: Position, limit: int = 500,
                     families: list[str] | None = None) -> list[Event]:
    """Committed events after `position` whose order can no longer change; `families` filters by
    the topic's first segment (e.g. ["stock"])."""
    rows = await pool.fetch(READ_AFTER_SQL, position[0], position[1], limit, families)
    return [Event(r["id"], r["txid"], r["topic"], r["key"], r["payload"], r["created_at"]) for r in rows]


async def head_position(pool: Pool | Connection) -> Position:
    """The position a new live subscriber starts from: everything stable so far counts as seen."""
    row = await pool.fetchrow(
        "SELECT txid, id FROM core.events"
        " WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        " ORDER BY txid DESC, id DESC LIMIT 1"
    )
    return START if row is None else (row["txid"], row["id"])


# --- retention (shared/housekeeping.py) -------------------------------------------------------------

# The oldest events in position order up to `through` (what every durable consumer has passed), each
# with whether it is past the window. Only stable ones, as readers take them: a transaction still running
# may yet commit an event before any later position, and the pruned part must stay a prefix. Through
# events_position, from just after the horizon: everything before it is deleted, and starting at the
# index's beginning would step over every entry deleted since the last vacuum, batch after batch.
OUTBOX_HEAD_SQL = """
SELECT txid, id, created_at < now() - make_interval(secs => $4) AS expired
FROM core.events
WHERE (txid, id) > ($5, $6) AND (txid, id) <= ($1, $2)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY txid, id
LIMIT $3
"""

# The horizon moves in the transaction that deletes, so a resume never sees the events gone and the
# horizon not yet moved (or the reverse).
DELETE_EVENTS_SQL = """
WITH gone AS (DELETE FROM core.events WHERE id = ANY($1::bigint[]) RETURNING id)
UPDATE core.outbox_horizon
SET txid = $2, event_id = $3, max_pruned_id = greatest(max_pruned_id, (SELECT max(id) FROM gone)),
    pruned_at = now()
"""

RESUME_SQL = """
SELECT (SELECT txid FROM core.events WHERE id = $1) AS txid,
       (SELECT max_pruned_id FROM core.outbox_horizon) AS max_pruned_id
"""


async def next_of(db: Pool | Connection, position: Position, families: list[str]) -> Position | None:
    """The first committed event of `families` after `position`: what a consumer there reads next."""
    row = await db.fetchrow(
        "SELECT txid, id FROM core.events WHERE (txid, id) > ($1, $2) AND split_part(topic, '.', 1) = ANY($3::text[])"
        " ORDER BY txid, id LIMIT 1", position[0], position[1], families)
    return None if row is None else (row["txid"], row["id"])


async def outbox_head(conn: Connection, through: Position, limit: int,
                      retention_s: float) -> list[tuple[int, int, bool]]:
    horizon = await conn.fetchrow("SELECT txid, event_id FROM core.outbox_horizon")
    rows = await conn.fetch(OUTBOX_HEAD_SQL, through[0], through[1], limit, retention_s,
                            horizon["txid"], horizon["event_id"])
    return [(r["txid"], r["id"], r["expired"]) for r in rows]


async def delete_events(conn: Connection, prefix: list[Position]) -> None:
    """Delete these events (a prefix of the outbox in position order) and move the horizon past them."""
    await conn.execute(DELETE_EVENTS_SQL, [event_id for _, event_id in prefix], *prefix[-1])


async def oldest_event_age_s(db: Pool | Connection) -> float | None:
    return await db.fetchval(
        "SELECT extract(epoch FROM now() - created_at)::float8 FROM core.events ORDER BY txid, id LIMIT 1")


@dataclass(frozen=True)
class Resume:
    """Where a stream resumed from `event_id` starts: `position`, or nothing (`pruned`: the events after
    it are no longer all kept; neither: no such event was ever published)."""

    position: Position | None
    pruned: bool = False


async def resume_after(db: Pool | Connection, event_id: int) -> Resume:
    """Resume after `event_id`. A retained event resumes where it was (every later event is retained
    too: the outbox is pruned as a prefix). An id that is gone and at most the largest id ever pruned,
    or 0 once anything was pruned, is `pruned`: clients only ever hold ids of committed events, and
    only pruning removes those. 0 before any pruning is the start of the outbox."""
    if event_id > MAX_EVENT_ID:
        return Resume(None)  # past what a bigserial can hand out (and what asyncpg can send)
    row = await db.fetchrow(RESUME_SQL, event_id)
    if row["txid"] is not None:
        return Resume((row["txid"], event_id))
    if row["max_pruned_id"] and event_id <= row["max_pruned_id"]:
        return Resume(None, pruned=True)
    return Resume(START if event_id == 0 else None)
