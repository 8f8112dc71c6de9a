"""All SQL of the inventory service. Functions take a connection (or pool) and plain values."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import asyncpg

from services.inventory.domain import BoundingBox
from shared.db import Connection, Pool
from shared.errors import InsufficientStock, ValidationFailed
from shared.outbox import publish

INSUFFICIENT_STOCK_SQLSTATE = "OS409"

UPSERT_LOCATION = """
INSERT INTO inventory.locations AS l (id, name, kind, lat, lon, ship, pickup, timezone, priority)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, kind = EXCLUDED.kind, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
    ship = EXCLUDED.ship, pickup = EXCLUDED.pickup, timezone = EXCLUDED.timezone,
    priority = EXCLUDED.priority, updated_at = now()
RETURNING *, (xmax = 0) AS created
"""

UPSERT_SKU = """
INSERT INTO inventory.skus AS s (sku, name, price, currency) VALUES ($1, $2, $3, $4)
ON CONFLICT (sku) DO UPDATE SET
    name = EXCLUDED.name, price = EXCLUDED.price, currency = EXCLUDED.currency, updated_at = now()
RETURNING *, (xmax = 0) AS created
"""

LEVEL_COLUMNS = (
    "location_id, on_hand, reserved, safety_stock, greatest(0, on_hand - reserved - safety_stock) AS available"
)

NEARBY_FROM_BOX = """
SELECT l.id AS location_id, l.name, d.km AS distance_km,
       greatest(0, s.on_hand - s.reserved - s.safety_stock) AS available
FROM inventory.locations l
JOIN inventory.stock_levels s ON s.sku = $1 AND s.location_id = l.id
CROSS JOIN LATERAL (SELECT inventory.distance_km($2, $3, l.lat, l.lon) AS km) d
WHERE l.lat BETWEEN $5 AND $6 AND l.lon BETWEEN $7 AND $8
  AND d.km <= $4
  AND greatest(0, s.on_hand - s.reserved - s.safety_stock) >= $9
ORDER BY d.km, l.id
LIMIT $10
"""

NEARBY_ANYWHERE = """
SELECT l.id AS location_id, l.name, inventory.distance_km($2, $3, l.lat, l.lon) AS distance_km,
       greatest(0, s.on_hand - s.reserved - s.safety_stock) AS available
FROM inventory.stock_levels s
JOIN inventory.locations l ON l.id = s.location_id
WHERE s.sku = $1 AND greatest(0, s.on_hand - s.reserved - s.safety_stock) >= $4
ORDER BY distance_km, l.id
LIMIT $5
"""


UNKNOWN_REFERENCE_SQLSTATE = "OS404"


def unknown_reference(exc: asyncpg.PostgresError, fields: dict[str, str | None]) -> ValidationFailed | None:
    """The 422 for a change that pointed at a SKU or location that does not exist, naming the body field
    (`fields` maps field names to the values sent); None if `exc` is not about an unknown reference."""
    if getattr(exc, "sqlstate", None) == UNKNOWN_REFERENCE_SQLSTATE:  # raised by inventory.apply_movement
        value = getattr(exc, "hint", None)
    elif isinstance(exc, asyncpg.ForeignKeyViolationError):  # a level created by inventory.lock_levels
        match = re.search(r"\)=\((.*)\) is not present", exc.detail or "")
        value = match.group(1) if match else None
    else:
        return None
    field = next((name for name, sent in fields.items() if sent == value), "body")
    noun = "sku" if field == "sku" else "location"
    return ValidationFailed([{"field": field, "problem": f"unknown {noun} '{value}'"}])


def insufficient(exc: asyncpg.PostgresError) -> InsufficientStock:
    sku, location = getattr(exc, "detail", None), getattr(exc, "hint", None)
    return InsufficientStock(str(exc.args[0]) if exc.args else "insufficient stock",
                             short=[{"sku": sku, "location_id": location}])


def is_insufficient(exc: asyncpg.PostgresError) -> bool:
    return getattr(exc, "sqlstate", None) == INSUFFICIENT_STOCK_SQLSTATE


async def upsert_location(conn: Connection, location_id: str, values: dict[str, Any]) -> asyncpg.Record:
    row = await conn.fetchrow(
        UPSERT_LOCATION, location_id, values["name"], values["kind"], values["lat"], values["lon"],
        values["ship"], values["pickup"], values["timezone"], values["priority"],
    )
    await publish(conn, "location.changed", location_id, {
        "location_id": location_id, "kind": row["kind"], "ship": row["ship"], "pickup": row["pickup"],
        "lat": row["lat"], "lon": row["lon"], "name": row["name"],
    })
    return row


async def get_location(db: Pool | Connection, location_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM inventory.locations WHERE id = $1", location_id)


async def list_locations(db: Pool | Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM inventory.locations ORDER BY id")


async def upsert_sku(conn: Connection, sku: str, name: str, price: Decimal, currency: str) -> asyncpg.Record:
    return await conn.fetchrow(UPSERT_SKU, sku, name, price, currency)


async def get_sku(db: Pool | Connection, sku: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM inventory.skus WHERE sku = $1", sku)


async def list_skus(db: Pool | Connection, after: str | None, limit: int, q: str | None = None
                    ) -> list[asyncpg.Record]:
    """SKUs in code order after `after`; with `q`, only those whose code starts with it or whose name holds it."""
    pattern = None if q is None else _like_escape(q)
    return await db.fetch(
        "SELECT * FROM inventory.skus WHERE ($1::text IS NULL OR sku > $1)"
        " AND ($3::text IS NULL OR sku ILIKE $3 || '%' OR name ILIKE '%' || $3 || '%')"
        " ORDER BY sku LIMIT $2", after, limit, pattern
    )


def _like_escape(text: str) -> str:
    """`text` matched literally by LIKE: a typed % or _ is a character, not a wildcard."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def sku_exists(db: Pool | Connection, sku: str) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM inventory.skus WHERE sku = $1)", sku))


async def lock_levels(conn: Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
    """Lock (creating if missing) the levels of `pairs`, in the one global order (see 0001_inventory.sql)."""
    unique = sorted(set(pairs))
    rows = await conn.fetch(
        "SELECT * FROM inventory.lock_levels($1::text[], $2::text[])",
        [p[0] for p in unique], [p[1] for p in unique],
    )
    return {(r["sku"], r["location_id"]): r for r in rows}


async def apply_movement(conn: Connection, sku: str, location_id: str, kind: str, on_hand_delta: int,
                         reserved_delta: int = 0, reference: str | None = None, reason: str | None = None,
                         actor: str | None = None) -> asyncpg.Record:
    """One level change with its movement row and event, through the published SQL function."""
    return await conn.fetchrow(
        "SELECT * FROM inventory.apply_movement($1, $2, $3, $4, $5, $6, $7, $8)",
        sku, location_id, kind, on_hand_delta, reserved_delta, reference, reason, actor,
    )


async def list_movements(db: Pool | Connection, sku: str | None, location_id: str | None, after: int,
                         limit: int, newest_first: bool = False) -> list[asyncpg.Record]:
    """Oldest first after id `after`, or newest first before it (0: from the newest)."""
    if newest_first:
        return await db.fetch(
            "SELECT * FROM inventory.stock_movements"
            " WHERE ($3 = 0 OR id < $3) AND ($1::text IS NULL OR sku = $1) AND ($2::text IS NULL OR location_id = $2)"
            " ORDER BY id DESC LIMIT $4",
            sku, location_id, after, limit,
        )
    return await db.fetch(
        "SELECT * FROM inventory.stock_movements"
        " WHERE id > $3 AND ($1::text IS NULL OR sku = $1) AND ($2::text IS NULL OR location_id = $2)"
        " ORDER BY id LIMIT $4",
        sku, location_id, after, limit,
    )


LEVELS_PAGE = f"""
SELECT sku, {LEVEL_COLUMNS}, updated_at FROM inventory.stock_levels
WHERE ($1::text IS NULL OR location_id = $1)
  AND ($2::text IS NULL OR starts_with(sku, $2))
  AND (NOT $3 OR on_hand - reserved < safety_stock)
  AND (location_id, sku) > ($4, $5)
ORDER BY location_id, sku
LIMIT $6
"""


async def list_levels(db: Pool | Connection, location_id: str | None, sku_prefix: str | None, below_safety: bool,
                      after: tuple[str, str], limit: int) -> list[asyncpg.Record]:
    """Stock levels by location then SKU, a page after (location, sku)."""
    return await db.fetch(LEVELS_PAGE, location_id, sku_prefix, below_safety, *after, limit)


async def stock_of(db: Pool | Connection, sku: str) -> list[asyncpg.Record]:
    return await db.fetch(
        f"SELECT {LEVEL_COLUMNS} FROM inventory.stock_levels WHERE sku = $1 ORDER BY location_id", sku
    )


async def set_safety_stock(conn: Connection, sku: str, location_id: str, safety_stock: int) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO inventory.stock_levels (sku, location_id, safety_stock) VALUES ($1, $2, $3)"
        " ON CONFLICT (sku, location_id) DO UPDATE SET safety_stock = EXCLUDED.safety_stock, updated_at = now()"
        f" RETURNING {LEVEL_COLUMNS}",
        sku, location_id, safety_stock,
    )
    await publish(conn, "stock.changed", sku, {
        "sku": sku, "location_id": location_id, "kind": "safety_stock", "movement_id": None,
        "on_hand_delta": 0, "reserved_delta": 0, "on_hand": row["on_hand"], "reserved": row["reserved"],
        "safety_stock": row["safety_stock"], "available": row["available"], "reference": None,
    })
    return row


async def nearby_in_box(db: Pool | Connection, sku: str, lat: float, lon: float, radius_km: float,
                        box: BoundingBox, min_available: int, limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        NEARBY_FROM_BOX, sku, lat, lon, radius_km, box.lat_min, box.lat_max, box.lon_min, box.lon_max,
        min_available, limit,
    )


async def nearby_anywhere(db: Pool | Connection, sku: str, lat: float, lon: float, min_available: int,
                          limit: int) -> list[asyncpg.Record]:
    return await db.fetch(NEARBY_ANYWHERE, sku, lat, lon, min_available, limit)


async def level_sums_mismatch(db: Pool | Connection) -> list[asyncpg.Record]:
    """Levels that differ from the sum of their movements (must always be empty)."""
    return await db.fetch(
        """
        SELECT l.sku, l.location_id, l.on_hand, l.reserved,
               coalesce(m.on_hand, 0) AS moved_on_hand, coalesce(m.reserved, 0) AS moved_reserved
        FROM inventory.stock_levels l
        LEFT JOIN (SELECT sku, location_id, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
                   FROM inventory.stock_movements GROUP BY sku, location_id) m
          USING (sku, location_id)
        WHERE l.on_hand <> coalesce(m.on_hand, 0) OR l.reserved <> coalesce(m.reserved, 0)
        """
    )


SEED_LOCATION_STOCK = """
WITH levels AS (
    INSERT INTO inventory.stock_levels (sku, location_id, on_hand)
    SELECT s.sku, $1, 1 + abs(hashtext(s.sku || $1)) % $3
    FROM inventory.skus s
    WHERE abs(hashtext($1 || s.sku)) % 1000 < $2
    ON CONFLICT (sku, location_id) DO NOTHING
    RETURNING sku, location_id, on_hand
)
INSERT INTO inventory.stock_movements (sku, location_id, kind, on_hand_delta, reserved_delta, reason, actor)
SELECT sku, location_id, 'receipt', on_hand, 0, 'seed', 'seed' FROM levels
"""


async def copy_locations(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    await conn.executemany(UPSERT_LOCATION, rows)


async def copy_skus(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    """Bulk-load SKUs (COPY into a scratch table, then insert the new ones), inside a transaction."""
    await conn.execute(
        "CREATE TEMP TABLE seed_skus (sku text, name text, price numeric, currency text) ON COMMIT DROP"
    )
    await conn.copy_records_to_table("seed_skus", columns=["sku", "name", "price", "currency"], records=rows)
    await conn.execute(
        "INSERT INTO inventory.skus (sku, name, price, currency) SELECT * FROM seed_skus"
        " ON CONFLICT (sku) DO NOTHING"
    )


async def seed_location_stock(conn: Connection, location_id: str, per_mille: int, max_qty: int) -> int:
    """Receive stock of about per_mille/1000 of all SKUs at one location, with their movements.

    One `location.changed` event stands for the location's thousands of new levels (an event per level
    would flood the outbox); consumers such as the availability projection re-read the location.
    """
    status = await conn.execute(SEED_LOCATION_STOCK, location_id, per_mille, max_qty)
    row = await get_location(conn, location_id)
    await publish(conn, "location.changed", location_id, {
        "location_id": location_id, "kind": row["kind"], "ship": row["ship"], "pickup": row["pickup"],
        "lat": row["lat"], "lon": row["lon"], "name": row["name"], "reason": "seeded",
    })
    return int(status.split()[-1])
