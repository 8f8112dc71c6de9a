"""The inventory dataset shared by the inventory scenarios: seeded once per run through the CLI."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from benchmarks.scenarios.base import Context

FULL = (1000, 100_000, 0.03)  # stores, SKUs, density: ~3M levels (+3M movements) seed in ~3 min on 2 cores
QUICK = (100, 5_000, 0.2)     # ~100k levels in seconds
PAIR_SAMPLE = 50_000          # (sku, location) pairs the movement load spreads over


@dataclass(frozen=True)
class InventoryData:
    stores: int
    skus: int
    density: float
    levels: int
    seed_s: float
    locations: list[tuple[str, float, float]]  # id, lat, lon
    pairs: list[tuple[str, str]]  # existing (sku, location_id) levels, a random sample


def inventory_data(ctx: Context) -> InventoryData:
    return ctx.dataset("inventory dataset (seed, vacuum, sample)", lambda: _seed(ctx))


def _seed(ctx: Context) -> InventoryData:
    stores, skus, density = QUICK if ctx.quick else FULL
    started = time.perf_counter()
    ctx.stack.omnistock("seed", "--stores", str(stores), "--skus", str(skus), "--density", str(density))
    seed_s = time.perf_counter() - started
    ctx.setup[f"seed {stores} stores x {skus} SKUs x {density}"] = round(seed_s, 1)
    levels, locations, pairs = asyncio.run(_describe(ctx.stack.dsn))
    return InventoryData(stores, skus, density, levels, round(seed_s, 1), locations, pairs)


async def _describe(dsn: str) -> tuple[int, list[tuple[str, float, float]], list[tuple[str, str]]]:
    conn = await asyncpg.connect(dsn)
    try:
        # After a bulk load an operator runs this; autovacuum would get there too, but not before the
        # benchmark starts, and stale statistics or an unset visibility map would measure the wrong plan.
        await conn.execute("VACUUM ANALYZE inventory.stock_levels, inventory.locations, inventory.skus")
        levels = await conn.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'inventory.stock_levels'::regclass"
        )
        locations = [(r["id"], r["lat"], r["lon"]) for r in
                     await conn.fetch("SELECT id, lat, lon FROM inventory.locations ORDER BY id")]
        # Bernoulli: every row equally likely (the table is stored location by location, so a LIMIT would
        # sample the first locations only).
        percent = min(100.0, 100.0 * PAIR_SAMPLE / max(1, levels))
        pairs = [(r["sku"], r["location_id"]) for r in await conn.fetch(
            f"SELECT sku, location_id FROM inventory.stock_levels TABLESAMPLE BERNOULLI ({percent:.6f})"
        )]
    finally:
        await conn.close()
    return int(levels), locations, pairs

