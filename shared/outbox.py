"""Writing and reading the outbox (core.events).

Writers call `publish` inside the transaction that makes the change, so an event exists exactly when
the change does. Readers page through `read_after` by position (txid, id): see 0001_core.sql for why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import Connection, Pool

Position = tuple[int, int]  # (txid, id)
START: Position = (0, 0)

READ_AFTER_SQL = """
SELECT id, txid, topic, key, payload, created_at
FROM core.events
WHERE (txid, id) > ($1, $2)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
  AND ($4::text[] IS NULL OR split_part(topic, '.', 1) = ANY($4::text[]))
ORDER BY txid, id
LIMIT $3
"""


@dataclass(frozen=True)
class Event:
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
            "INSERT INTO core.events (topic, key, payload)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])",
            [e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
        )


async def read_after(pool: Pool | Connection, position: Position, limit: int = 500,
                     families: list[str] | None = None) -> list[Event]:
    """Committed events after `position` whose order can no longer change; `families` filters by
    the topic's first segment (e.g. ["stock"])."""
    rows = await pool.fetch(READ_AFTER_SQL, position[0], position[1], limit, families)
    return [Event(r["id"], r["txid"], r["topic"], r["key"], r["payload"], r["created_at"]) for r in rows]


async def position_of(pool: Pool, event_id: int) -> Position | None:
    txid = await pool.fetchval("SELECT txid FROM core.events WHERE id = $1", event_id)
    return None if txid is None else (txid, event_id)


async def head_position(pool: Pool | Connection) -> Position:
    """The position a new live subscriber starts from: everything stable so far counts as seen."""
    row = await pool.fetchrow(
        "SELECT txid, id FROM core.events"
        " WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        " ORDER BY txid DESC, id DESC LIMIT 1"
    )
    return START if row is None else (row["txid"], row["id"])
