"""What the inventory API and CLI do, one function per use case; each runs in one transaction."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import asyncpg

from services.inventory import domain
from services.inventory import repository as repo
from services.inventory import seed as seed_data
from services.inventory.schemas import (
    LevelOut,
    LocationIn,
    MovementIn,
    MovementOut,
    NearbyOut,
    NearbyQuery,
    NearbyResult,
    SkuIn,
    StockOut,
)
from shared.db import Connection, Pool, transaction
from shared.errors import NotFound, field_error


def level_out(row: asyncpg.Record, location_id: str | None = None) -> LevelOut:
    return LevelOut(
        location_id=location_id or row["location_id"], on_hand=row["on_hand"], reserved=row["reserved"],
        safety_stock=row["safety_stock"], available=row["available"],
    )


async def put_location(pool: Pool, location_id: str, body: LocationIn) -> tuple[bool, asyncpg.Record]:
    async with transaction(pool) as conn:
        row = await repo.upsert_location(conn, location_id, body.model_dump())
    return bool(row["created"]), row


async def put_sku(pool: Pool, sku: str, body: SkuIn) -> tuple[bool, asyncpg.Record]:
    async with transaction(pool) as conn:
        row = await repo.upsert_sku(conn, sku, body.name, body.price, body.currency)
    return bool(row["created"]), row


async def record_movement(conn: Connection, body: MovementIn, actor: str) -> MovementOut:
    """Apply a client's movement inside the caller's transaction (the idempotency claim's)."""
    domain.check_movement(body.kind, body.qty, body.location_id, body.to_location_id)
    try:
        rows = await _apply(conn, body, actor)
    except asyncpg.PostgresError as exc:
        if repo.is_insufficient(exc):
            raise repo.insufficient(exc) from None
        fields = {"sku": body.sku, "location_id": body.location_id, "to_location_id": body.to_location_id}
        if unknown := repo.unknown_reference(exc, fields):
            raise unknown from None
        raise
    return MovementOut(
        sku=body.sku, kind=body.kind, qty=body.qty,
        movement_ids=[r["movement_id"] for _, r in rows],
        levels=[level_out(r, loc) for loc, r in rows],
    )


async def _apply(conn: Connection, body: MovementIn, actor: str) -> list[tuple[str, asyncpg.Record]]:
    sku, source = body.sku, body.location_id
    if body.kind in ("receipt", "adjustment"):
        delta = domain.movement_deltas(body.kind, body.qty, on_hand=0)
        row = await repo.apply_movement(conn, sku, source, body.kind, delta.on_hand, reason=body.reason, actor=actor)
        return [(source, row)]
    if body.kind == "count":
        locked = await repo.lock_levels(conn, [(sku, source)])
        delta = domain.movement_deltas("count", body.qty, on_hand=locked[(sku, source)]["on_hand"])
        row = await repo.apply_movement(conn, sku, source, "count", delta.on_hand, reason=body.reason, actor=actor)
        return [(source, row)]
    destination = body.to_location_id or ""
    reference = f"transfer:{uuid.uuid4()}"
    await repo.lock_levels(conn, [(sku, source), (sku, destination)])
    out = await repo.apply_movement(conn, sku, source, "transfer", -body.qty, reference=reference,
                                    reason=body.reason, actor=actor)
    into = await repo.apply_movement(conn, sku, destination, "transfer", body.qty, reference=reference,
                                     reason=body.reason, actor=actor)
    return [(source, out), (destination, into)]


async def set_safety_stock(pool: Pool, sku: str, location_id: str, safety_stock: int) -> LevelOut:
    try:
        async with transaction(pool) as conn:
            return level_out(await repo.set_safety_stock(conn, sku, location_id, safety_stock))
    except asyncpg.ForeignKeyViolationError as exc:
        unknown = repo.unknown_reference(exc, {"sku": sku, "location_id": location_id})
        raise NotFound(unknown.detail if unknown else "unknown sku or location") from None


async def stock(pool: Pool, sku: str) -> StockOut:
    rows = await repo.stock_of(pool, sku)
    if not rows and not await repo.sku_exists(pool, sku):
        raise NotFound(f"unknown sku '{sku}'")
    levels = [level_out(r) for r in rows]
    return StockOut(sku=sku, locations=levels, total_available=sum(level.available for level in levels))


async def nearby(pool: Pool, sku: str, query: NearbyQuery) -> NearbyOut:
    if query.location_id is not None:
        origin = await repo.get_location(pool, query.location_id)
        if origin is None:
            raise field_error("location_id", f"unknown location '{query.location_id}'")
        lat, lon = origin["lat"], origin["lon"]
    else:
        assert query.lat is not None and query.lon is not None
        lat, lon = query.lat, query.lon
    if query.radius_km is None:
        rows = await repo.nearby_anywhere(pool, sku, lat, lon, query.min_available, query.limit)
    else:
        box = domain.bounding_box(lat, lon, query.radius_km)
        rows = await repo.nearby_in_box(pool, sku, lat, lon, query.radius_km, box, query.min_available, query.limit)
    if not rows and not await repo.sku_exists(pool, sku):  # checked only when it matters: one query less
        raise NotFound(f"unknown sku '{sku}'")
    results = [
        NearbyResult(location_id=r["location_id"], name=r["name"], distance_km=round(r["distance_km"], 3),
                     available=r["available"])
        for r in rows
    ]
    return NearbyOut(sku=sku, results=results)


async def seed(pool: Pool, stores: int, skus: int, per_mille: int = 1000, max_qty: int = 40,
               on_location: Callable[[int], None] | None = None, rng_seed: int = 7) -> tuple[int, int, int]:
    """Demo data: locations near real cities, SKUs, and stock received at each location.

    Returns (locations, skus, stock levels created). Safe to run twice: existing rows are kept.
    """
    rng = random.Random(rng_seed)
    locations = seed_data.demo_locations(stores, rng)
    catalog = seed_data.demo_skus(skus, rng)
    async with transaction(pool) as conn:
        await repo.copy_locations(conn, [
            (loc.id, loc.name, loc.kind, loc.lat, loc.lon, loc.ship, loc.pickup, loc.timezone, loc.priority)
            for loc in locations
        ])
        await repo.copy_skus(conn, [(s.sku, s.name, s.price, s.currency) for s in catalog])
    levels = 0
    for loc in locations:
        async with transaction(pool) as conn:
            levels += await repo.seed_location_stock(conn, loc.id, per_mille, max_qty)
        if on_location:
            on_location(1)
    return len(locations), len(catalog), levels
