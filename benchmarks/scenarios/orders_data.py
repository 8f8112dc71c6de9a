"""The orders dataset: 10,000 SKUs (2,000 in quick runs) stocked at 50 locations of their own (one
warehouse, 17 shipping stores, 32 pick-up-only stores around Western Europe), made once per run with
set-based SQL.

Names are prefixed `bo-` so they never collide with the inventory scenarios' seed in the same
database. Every level gets its receipt movement, so stock equals the sum of movements from the start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from benchmarks.scenarios.base import Context

LOCATIONS, SKUS = 50, 10_000
QUICK_SKUS = 2_000  # a fifth of the seed time; 16 clients still rarely meet on one level
SHIPPING = 18  # the warehouse and 17 stores ship; the rest offer pick-up only
WAREHOUSE = "bo-01"


@dataclass(frozen=True)
class OrdersData:
    skus: list[str]
    locations: int
    levels: int


def orders_data(ctx: Context) -> OrdersData:
    skus = QUICK_SKUS if ctx.quick else SKUS
    return ctx.dataset("orders seed", lambda: asyncio.run(seed(ctx.stack.dsn, skus)))


SKUS_SEED = """
INSERT INTO inventory.skus (sku, name, price, currency)
SELECT 'BO-' || lpad(i::text, 6, '0'), 'Orders bench SKU ' || i, 10, 'EUR' FROM generate_series(1, $1::int) AS i
"""
SEED = f"""
INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup, timezone, priority)
SELECT 'bo-' || lpad(i::text, 2, '0'), 'Orders bench ' || i, CASE WHEN i = 1 THEN 'warehouse' ELSE 'store' END,
       45 + (i * 7919 % 1000) / 100.0, -5 + (i * 104729 % 2000) / 100.0, i <= {SHIPPING}, i > 1, 'Europe/Paris',
       CASE WHEN i = 1 THEN 10 ELSE 100 END
  FROM generate_series(1, {LOCATIONS}) AS i;
INSERT INTO inventory.stock_levels (sku, location_id, on_hand)
SELECT s.sku, l.id, 20 + (hashtext(s.sku || l.id) & 31)
  FROM inventory.skus s CROSS JOIN inventory.locations l WHERE s.sku LIKE 'BO-%' AND l.id LIKE 'bo-%';
INSERT INTO inventory.stock_movements (sku, location_id, kind, on_hand_delta, reserved_delta, reference, actor)
SELECT sku, location_id, 'receipt', on_hand, 0, 'orders bench seed', 'bench'
  FROM inventory.stock_levels WHERE location_id LIKE 'bo-%';
"""


async def seed(dsn: str, skus: int = SKUS) -> OrdersData:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(SKUS_SEED, skus)
            await conn.execute(SEED)
        await conn.execute("VACUUM ANALYZE inventory.stock_levels, inventory.stock_movements, inventory.skus,"
                           " inventory.locations")
        names = [r["sku"] for r in await conn.fetch("SELECT sku FROM inventory.skus WHERE sku LIKE 'BO-%'")]
        levels = await conn.fetchval("SELECT count(*) FROM inventory.stock_levels WHERE location_id LIKE 'bo-%'")
    finally:
        await conn.close()
    return OrdersData(names, LOCATIONS, int(levels))
