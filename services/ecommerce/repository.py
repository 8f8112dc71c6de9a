"""SQL of the availability projection, channel rules, availability reads and the endless aisle.

Inventory's tables are read here (never written): the projection refreshes its mirrors from them, the
rebuild recomputes from them, the endless aisle answers from them live. Webhook SQL is in
webhook_repository.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from services.ecommerce.domain import DEFAULT_SCOPE, Availability, Rule
from shared.db import Connection, Pool
from shared.outbox import START, Event, Position

# Inventory's published definition (CONTRACT): available = on_hand - reserved - safety_stock, never < 0.
INVENTORY_AVAILABLE = "greatest(0, s.on_hand - s.reserved - s.safety_stock)"


# --- cursors ----------------------------------------------------------------------------------------


async def lock_cursor(conn: Connection, name: str, *, wait: bool) -> Position | None:
    """Lock a consumer's cursor row for this transaction; None when another process holds it."""
    sql = "SELECT txid, event_id FROM ecommerce.cursors WHERE name = $1 FOR UPDATE"
    row = await conn.fetchrow(sql if wait else sql + " SKIP LOCKED", name)
    return None if row is None else (row["txid"], row["event_id"])


@dataclass(frozen=True)
class CursorState:
    """Where a consumer's cursor stands, its version (every change of the row moves it) and, for the
    projection, the position of the last event it published."""

    position: Position
    version: int
    published: Position = START


async def read_cursor(db: Pool | Connection, name: str) -> CursorState:
    row = await db.fetchrow("SELECT txid, event_id, version, published_txid, published_id"
                            " FROM ecommerce.cursors WHERE name = $1", name)
    return CursorState((row["txid"], row["event_id"]), row["version"], (row["published_txid"], row["published_id"]))


async def cursor_of(db: Pool | Connection, name: str) -> Position:
    return (await read_cursor(db, name)).position


async def cursors(db: Pool | Connection) -> dict[str, Position]:
    """Every consumer's cursor, by name (housekeeping prunes only what all of them have passed)."""
    rows = await db.fetch("SELECT name, txid, event_id FROM ecommerce.cursors")
    return {r["name"]: (r["txid"], r["event_id"]) for r in rows}


# --- projection: refreshing the mirrors -----------------------------------------------------------


async def refresh_locations(conn: Connection, location_ids: list[str]) -> None:
    await conn.execute(
        """
        INSERT INTO ecommerce.locations (location_id, name, kind, ship, pickup, lat, lon)
        SELECT id, name, kind, ship, pickup, lat, lon FROM inventory.locations WHERE id = ANY($1::text[])
        ON CONFLICT (location_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
            ship = EXCLUDED.ship, pickup = EXCLUDED.pickup, lat = EXCLUDED.lat, lon = EXCLUDED.lon
        """,
        location_ids,
    )


# For a batch of stock changes, read-only: each (sku, location)'s availability in inventory now, its
# mirrored value (null: not mirrored yet) and whether the location ships, by the mirror or, for a
# location not mirrored yet, by inventory. Each pair is looked up by key (lateral), whatever the plan
# guesses for unnest.
PAIRS_NOW = f"""
SELECT t.sku, t.location_id, {INVENTORY_AVAILABLE} AS available, mirror.available AS mirrored,
       coalesce(loc.ship, fresh.ship, false) AS ship, loc.location_id IS NOT NULL AS location_mirrored
FROM unnest($1::text[], $2::text[]) AS t(sku, location_id)
JOIN LATERAL (SELECT * FROM inventory.stock_levels WHERE sku = t.sku AND location_id = t.location_id) s ON true
LEFT JOIN LATERAL (SELECT available FROM ecommerce.levels
                   WHERE sku = t.sku AND location_id = t.location_id) mirror ON true
LEFT JOIN ecommerce.locations loc ON loc.location_id = t.location_id
LEFT JOIN inventory.locations fresh ON fresh.id = t.location_id
"""


@dataclass(frozen=True)
class PairNow:
    """One (sku, location) of a batch: inventory's availability now against the mirror's (PAIRS_NOW)."""

    sku: str
    location_id: str
    available: int
    mirrored: int | None
    ship: bool
    location_mirrored: bool

    @property
    def ship_moved(self) -> int:
        """How far this level moves its SKU's ship sum when the mirror takes the new value."""
        return self.available - (self.mirrored or 0) if self.ship else 0


async def pairs_now(db: Pool | Connection, pairs: list[tuple[str, str]]) -> list[PairNow]:
    rows = await db.fetch(PAIRS_NOW, [p[0] for p in pairs], [p[1] for p in pairs])
    return [PairNow(r["sku"], r["location_id"], r["available"], r["mirrored"], r["ship"], r["location_mirrored"])
            for r in rows]


async def refresh_levels_at(conn: Connection, location_ids: list[str]) -> list[str]:
    """Re-copy every level at these locations; return the SKUs stocked there."""
    rows = await conn.fetch(
        f"""
        INSERT INTO ecommerce.levels (sku, location_id, available)
        SELECT s.sku, s.location_id, {INVENTORY_AVAILABLE}
        FROM inventory.stock_levels s WHERE s.location_id = ANY($1::text[])
        ORDER BY s.sku, s.location_id
        ON CONFLICT (sku, location_id) DO UPDATE SET available = EXCLUDED.available
        RETURNING sku
        """,
        location_ids,
    )
    return [r["sku"] for r in rows]


async def projected_skus(db: Pool | Connection) -> list[str]:
    rows = await db.fetch("SELECT sku FROM ecommerce.availability UNION SELECT DISTINCT sku FROM ecommerce.levels")
    return [r["sku"] for r in rows]


# What recomputing these SKUs needs, in one statement: per SKU the stored availability (none: nothing
# sellable yet), its own rule and the default rule, and when $3 the sum of mirrored availability over
# ship-enabled locations (0 when none; else null: the caller knows how the sums moved). Lateral lookups
# by key whatever the plan guesses for unnest($1): as joins, the planner (assuming 100 SKUs) hashed
# them against a scan of every mirrored level.
RECOMPUTE_INPUTS = """
SELECT q.sku, CASE WHEN $3 THEN coalesce(sums.ship_available, 0) END::bigint AS ship_available,
       a.ship_available AS old_ship_available, a.sellable AS old_sellable, a.state AS old_state,
       own.buffer_kind, own.buffer_value, own.low_stock_threshold,
       d.buffer_kind AS default_buffer_kind, d.buffer_value AS default_buffer_value,
       d.low_stock_threshold AS default_low_stock_threshold, own.scope IS NOT NULL AS has_own,
       d.scope IS NOT NULL AS has_default
FROM unnest($1::text[]) AS q(sku)
LEFT JOIN LATERAL (
    SELECT sum(l.available) AS ship_available
    FROM ecommerce.levels l JOIN ecommerce.locations loc ON loc.location_id = l.location_id
    WHERE $3 AND l.sku = q.sku AND loc.ship) sums ON true
LEFT JOIN LATERAL (SELECT * FROM ecommerce.availability WHERE sku = q.sku) a ON true
LEFT JOIN LATERAL (SELECT * FROM ecommerce.channel_rules WHERE scope = q.sku) own ON true
LEFT JOIN ecommerce.channel_rules d ON d.scope = $2
"""


@dataclass(frozen=True)
class RecomputeInput:
    """One SKU's inputs to domain.availability (RECOMPUTE_INPUTS)."""

    ship_available: int | None  # None unless summed
    stored: Availability | None
    own_rule: Rule | None


async def recompute_inputs(db: Pool | Connection, skus: list[str],
                           sum_levels: bool) -> tuple[Rule | None, dict[str, RecomputeInput]]:
    """(default rule, inputs by SKU) for recomputing `skus`, with their ship sums if `sum_levels`."""
    rows = await db.fetch(RECOMPUTE_INPUTS, skus, DEFAULT_SCOPE, sum_levels)
    default = None
    inputs = {}
    for r in rows:
        if r["has_default"]:
            default = Rule(r["default_buffer_kind"], r["default_buffer_value"], r["default_low_stock_threshold"])
        stored = None if r["old_state"] is None else \
            Availability(r["old_ship_available"], r["old_sellable"], r["old_state"])
        own = Rule(r["buffer_kind"], r["buffer_value"], r["low_stock_threshold"]) if r["has_own"] else None
        inputs[r["sku"]] = RecomputeInput(r["ship_available"], stored, own)
    return default, inputs


async def availability_of(db: Pool | Connection, skus: list[str]) -> dict[str, Availability]:
    rows = await db.fetch(
        "SELECT sku, ship_available, sellable, state FROM ecommerce.availability WHERE sku = ANY($1::text[])", skus
    )
    return {r["sku"]: Availability(r["ship_available"], r["sellable"], r["state"]) for r in rows}


async def all_availability(db: Pool | Connection) -> dict[str, Availability]:
    rows = await db.fetch("SELECT sku, ship_available, sellable, state FROM ecommerce.availability")
    return {r["sku"]: Availability(r["ship_available"], r["sellable"], r["state"]) for r in rows}


# A batch's whole write in one statement, on the condition that the cursor still stands where the
# projector read it (version included): the moved levels, the locations first seen, the changed
# availability, its events and the cursor. Run on its own (no transaction) it holds a transaction id only
# while it runs. Every write waits for `moved`, so the cursor row is locked first (a concurrent writer
# waits there, then finds the version moved and writes nothing), and nothing is written when it did not
# move. Returns the transaction's id (the `txid` of the events it published), or no row.
SAVE_BATCH = """
WITH numbered AS (
    -- Ids drawn here, so the cursor row can name the last one in the statement that inserts them.
    SELECT nextval(pg_get_serial_sequence('core.events', 'id')) AS id, topic, key, payload
    FROM (SELECT * FROM unnest($13::text[], $14::text[], $15::jsonb[]) WITH ORDINALITY AS e(topic, key, payload, n)
          ORDER BY n) e
), moved AS (
    UPDATE ecommerce.cursors SET txid = $3, event_id = $4, version = version + 1, updated_at = now(),
        published_txid = CASE WHEN $16 THEN pg_current_xact_id()::text::bigint ELSE published_txid END,
        published_id = CASE WHEN $16 THEN (SELECT max(id) FROM numbered) ELSE published_id END
    -- A writer whose transaction id is below the last publisher's (it drew it before waiting for this
    -- row) would publish events that sort before ones already streamed (migration ecommerce/0008).
    WHERE name = $1 AND version = $2 AND pg_current_xact_id()::text::bigint > published_txid
    RETURNING pg_current_xact_id()::text::bigint AS txid
), new_locations AS (
    INSERT INTO ecommerce.locations (location_id, name, kind, ship, pickup, lat, lon)
    SELECT id, name, kind, ship, pickup, lat, lon FROM inventory.locations
    WHERE id = ANY($5::text[]) AND EXISTS (SELECT 1 FROM moved)
    ON CONFLICT (location_id) DO NOTHING
), levels AS (
    INSERT INTO ecommerce.levels (sku, location_id, available)
    SELECT * FROM unnest($6::text[], $7::text[], $8::bigint[]) WHERE EXISTS (SELECT 1 FROM moved) ORDER BY 1, 2
    ON CONFLICT (sku, location_id) DO UPDATE SET available = EXCLUDED.available
), saved AS (
    INSERT INTO ecommerce.availability (sku, ship_available, sellable, state)
    SELECT * FROM unnest($9::text[], $10::bigint[], $11::bigint[], $12::text[]) WHERE EXISTS (SELECT 1 FROM moved)
    ORDER BY 1
    ON CONFLICT (sku) DO UPDATE SET ship_available = EXCLUDED.ship_available,
        sellable = EXCLUDED.sellable, state = EXCLUDED.state, updated_at = now()
), published AS (
    INSERT INTO core.events (id, topic, key, payload)
    SELECT id, topic, key, payload FROM numbered WHERE EXISTS (SELECT 1 FROM moved)
    RETURNING id, created_at
)
SELECT txid, (SELECT array_agg(id ORDER BY id) FROM published) AS ids,
       (SELECT array_agg(created_at ORDER BY id) FROM published) AS created
FROM moved
"""


@dataclass(frozen=True)
class Batch:
    """What one projector batch writes (SAVE_BATCH)."""

    levels: list[tuple[str, str, int]]  # (sku, location, available) whose mirrored number moved
    new_locations: list[str]  # locations to mirror before their first level
    changed: list[tuple[str, Availability]]
    events: list[tuple[str, str, dict[str, Any]]]


@dataclass(frozen=True)
class Saved:
    """A batch as written: its transaction and the events it published, in order."""

    txid: int
    events: list[Event]


async def save_batch(db: Pool | Connection, name: str, read: CursorState, to: Position,
                     batch: Batch) -> Saved | None:
    """Write `batch` and move cursor `name` to `to` if it is still as `read`; None when another process
    moved it first, or published after this transaction began (nothing written)."""
    row = await db.fetchrow(
        SAVE_BATCH, name, read.version, to[0], to[1], batch.new_locations,
        [lv[0] for lv in batch.levels], [lv[1] for lv in batch.levels], [lv[2] for lv in batch.levels],
        [sku for sku, _ in batch.changed], [a.ship_available for _, a in batch.changed],
        [a.sellable for _, a in batch.changed], [a.state for _, a in batch.changed],
        [e[0] for e in batch.events], [e[1] for e in batch.events], [e[2] for e in batch.events],
        bool(batch.events),
    )
    if row is None:
        return None
    txid = row["txid"]
    published = [Event(event_id, txid, topic, key, payload, created)
                 for event_id, created, (topic, key, payload) in zip(row["ids"] or [], row["created"] or [],
                                                                    batch.events, strict=True)]
    return Saved(txid, published)


# --- from scratch (rebuild and its check) ---------------------------------------------------------


async def expected_levels(conn: Connection) -> set[tuple[str, str, int]]:
    rows = await conn.fetch(f"SELECT s.sku, s.location_id, {INVENTORY_AVAILABLE} AS available"
                            " FROM inventory.stock_levels s")
    return {(r["sku"], r["location_id"], r["available"]) for r in rows}


async def mirrored_levels(conn: Connection) -> set[tuple[str, str, int]]:
    rows = await conn.fetch("SELECT sku, location_id, available FROM ecommerce.levels")
    return {(r["sku"], r["location_id"], r["available"]) for r in rows}


async def expected_locations(conn: Connection) -> set[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT id, name, kind, ship, pickup, lat, lon FROM inventory.locations")
    return {tuple(r) for r in rows}


async def mirrored_locations(conn: Connection) -> set[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT location_id, name, kind, ship, pickup, lat, lon FROM ecommerce.locations")
    return {tuple(r) for r in rows}


async def ship_sums_from_inventory(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch(
        f"""
        SELECT s.sku, coalesce(sum({INVENTORY_AVAILABLE}) FILTER (WHERE l.ship), 0)::bigint AS ship_available
        FROM inventory.stock_levels s JOIN inventory.locations l ON l.id = s.location_id
        GROUP BY s.sku
        """
    )
    return {r["sku"]: r["ship_available"] for r in rows}


async def replace_mirrors(conn: Connection) -> None:
    """Make both mirrors equal to inventory (the rebuild's first step)."""
    await conn.execute("DELETE FROM ecommerce.levels")
    await conn.execute("DELETE FROM ecommerce.locations")
    await refresh_locations(conn, [r["id"] for r in await conn.fetch("SELECT id FROM inventory.locations")])
    await conn.execute(
        f"INSERT INTO ecommerce.levels (sku, location_id, available)"
        f" SELECT s.sku, s.location_id, {INVENTORY_AVAILABLE} FROM inventory.stock_levels s"
    )


async def delete_availability(conn: Connection, skus: list[str]) -> None:
    await conn.execute("DELETE FROM ecommerce.availability WHERE sku = ANY($1::text[])", skus)


# --- channel rules ----------------------------------------------------------------------------------


def _rule(row: asyncpg.Record) -> Rule:
    return Rule(row["buffer_kind"], row["buffer_value"], row["low_stock_threshold"])


async def rules_for(db: Pool | Connection, skus: list[str] | None) -> tuple[Rule | None, dict[str, Rule]]:
    """(default rule, rules by SKU) for `skus`, or for every SKU when `skus` is None."""
    rows = await db.fetch(
        "SELECT * FROM ecommerce.channel_rules WHERE $1::text[] IS NULL OR scope = ANY($1::text[]) OR scope = $2",
        None if skus is None else list(skus), DEFAULT_SCOPE,
    )
    by_scope = {r["scope"]: _rule(r) for r in rows}
    return by_scope.pop(DEFAULT_SCOPE, None), by_scope


async def put_rule(conn: Connection, scope: str, kind: str | None, value: Decimal | None,
                   threshold: int | None) -> asyncpg.Record:
    return await conn.fetchrow(
        """
        INSERT INTO ecommerce.channel_rules (scope, buffer_kind, buffer_value, low_stock_threshold)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (scope) DO UPDATE SET buffer_kind = EXCLUDED.buffer_kind, buffer_value = EXCLUDED.buffer_value,
            low_stock_threshold = EXCLUDED.low_stock_threshold, updated_at = now()
        RETURNING *
        """,
        scope, kind, value, threshold,
    )


async def delete_rule(conn: Connection, scope: str) -> bool:
    return await conn.fetchval("DELETE FROM ecommerce.channel_rules WHERE scope = $1 RETURNING true", scope) or False


async def list_rules(db: Pool | Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM ecommerce.channel_rules ORDER BY scope = $1 DESC, scope", DEFAULT_SCOPE)


# --- reads ------------------------------------------------------------------------------------------


async def known_skus(db: Pool | Connection, skus: list[str]) -> set[str]:
    rows = await db.fetch("SELECT sku FROM inventory.skus WHERE sku = ANY($1::text[])", skus)
    return {r["sku"] for r in rows}


async def availability_row(db: Pool | Connection, sku: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM ecommerce.availability WHERE sku = $1", sku)


async def pickup_levels(db: Pool | Connection, sku: str) -> list[asyncpg.Record]:
    return await db.fetch(
        """
        SELECT l.location_id, loc.name, l.available
        FROM ecommerce.levels l JOIN ecommerce.locations loc USING (location_id)
        WHERE l.sku = $1 AND loc.pickup AND l.available > 0
        ORDER BY l.location_id
        """,
        sku,
    )


async def location_point(db: Pool | Connection, location_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT id, lat, lon FROM inventory.locations WHERE id = $1", location_id)


async def sources_of(db: Pool | Connection, sku: str, lat: float, lon: float, min_available: int,
                     exclude: str | None) -> list[asyncpg.Record]:
    """Every ship- or pickup-enabled location holding at least `min_available`, nearest first (live)."""
    return await db.fetch(
        f"""
        SELECT l.id AS location_id, l.name, l.kind, l.ship, l.pickup, {INVENTORY_AVAILABLE} AS available,
               inventory.distance_km($2, $3, l.lat, l.lon) AS distance_km
        FROM inventory.stock_levels s JOIN inventory.locations l ON l.id = s.location_id
        WHERE s.sku = $1 AND {INVENTORY_AVAILABLE} >= $4 AND (l.ship OR l.pickup)
          AND l.id IS DISTINCT FROM $5
        ORDER BY distance_km, l.id
        """,
        sku, lat, lon, min_available, exclude,
    )


async def available_at(db: Pool | Connection, sku: str, location_id: str) -> int:
    value = await db.fetchval(
        f"SELECT {INVENTORY_AVAILABLE} FROM inventory.stock_levels s WHERE s.sku = $1 AND s.location_id = $2",
        sku, location_id,
    )
    return int(value or 0)


# --- inbound shop orders ----------------------------------------------------------------------------


async def claim_shop_order(conn: Connection, channel: str, external_id: str, body_sha256: bytes) -> bool:
    """Claim (channel, external id) in this transaction. A concurrent copy waits here until the first
    commits (then finds the claim) or rolls back (then claims it itself)."""
    return bool(await conn.fetchval(
        "INSERT INTO ecommerce.shop_orders (channel, external_id, body_sha256) VALUES ($1, $2, $3)"
        " ON CONFLICT (channel, external_id) DO NOTHING RETURNING true",
        channel, external_id, body_sha256,
    ))


async def replayed_shop_order(conn: Connection, channel: str, external_id: str) -> Any:
    return await conn.fetchval(
        "UPDATE ecommerce.shop_orders SET replays = replays + 1 WHERE channel = $1 AND external_id = $2"
        " RETURNING response",
        channel, external_id,
    )


async def complete_shop_order(conn: Connection, channel: str, external_id: str, order_id: str,
                              response: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE ecommerce.shop_orders SET order_id = $3, response = $4 WHERE channel = $1 AND external_id = $2",
        channel, external_id, order_id, response,
    )


# --- how far behind the channel is (sync_metrics.py) ---------------------------------------------------

# Events a consumer has not read yet, up to $4 of them, and the age of the oldest: what "falling behind"
# means for the projection and the webhook fan-out. Read in position order from the consumer's cursor.
CONSUMER_LAG = """
SELECT count(*) AS events, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_s
FROM (SELECT created_at FROM core.events
      WHERE (txid, id) > ($1, $2) AND split_part(topic, '.', 1) = ANY($3::text[])
      ORDER BY txid, id LIMIT $4) AS unread
"""


async def consumer_lag(db: Pool | Connection, position: Position, families: list[str],
                       cap: int) -> tuple[int, float]:
    row = await db.fetchrow(CONSUMER_LAG, position[0], position[1], families, cap)
    return row["events"], row["oldest_s"]
