"""What the e-commerce API does for availability, channel rules and the endless aisle."""

from __future__ import annotations

import asyncpg

from services.ecommerce import domain
from services.ecommerce import repository as repo
from services.ecommerce.projection import RULES_CHANGED
from services.ecommerce.schemas import (
    AisleOption,
    AisleOut,
    AisleQuery,
    AvailabilityItem,
    AvailabilityList,
    BufferOut,
    PickupStore,
    RuleIn,
    RuleList,
    RuleOut,
    SkuAvailability,
)
from shared.db import Pool, transaction
from shared.errors import NotFound, field_error
from shared.outbox import publish

# --- availability -----------------------------------------------------------------------------------


async def batch_availability(pool: Pool, skus: list[str]) -> AvailabilityList:
    """Sellable numbers from the projection; catalogue SKUs never stocked are 0, unknown ones listed."""
    wanted = list(dict.fromkeys(skus))
    known = await repo.known_skus(pool, wanted)
    projected = await repo.availability_of(pool, wanted)
    items = []
    for sku in wanted:
        if sku in known:
            current = projected.get(sku, domain.NOTHING)
            items.append(AvailabilityItem(sku=sku, available=current.sellable, state=current.state))
    return AvailabilityList(items=items, unknown=[sku for sku in wanted if sku not in known])


async def sku_availability(pool: Pool, sku: str) -> SkuAvailability:
    row = await repo.availability_row(pool, sku)
    if row is None and not await repo.known_skus(pool, [sku]):
        raise NotFound(f"unknown sku '{sku}'")
    pickup = [PickupStore(location_id=r["location_id"], name=r["name"], available=r["available"])
              for r in await repo.pickup_levels(pool, sku)]
    if row is None:
        return SkuAvailability(sku=sku, available=0, state="out_of_stock", ship_available=0, pickup=pickup,
                               updated_at=None)
    return SkuAvailability(sku=sku, available=row["sellable"], state=row["state"],
                           ship_available=row["ship_available"], pickup=pickup, updated_at=row["updated_at"])


# --- channel rules ----------------------------------------------------------------------------------


def _rule_out(row: asyncpg.Record) -> RuleOut:
    scope = row["scope"]
    value = row["buffer_value"]
    if value is not None and value == value.to_integral_value():
        value = value.to_integral_value()  # "2", not "2.00": what the client most likely sent
    buffer = None if row["buffer_kind"] is None else BufferOut(kind=row["buffer_kind"], value=value)
    return RuleOut(sku=None if scope == domain.DEFAULT_SCOPE else scope, buffer=buffer,
                   low_stock_threshold=row["low_stock_threshold"], updated_at=row["updated_at"])


async def put_rule(pool: Pool, sku: str | None, body: RuleIn) -> RuleOut:
    """Set a SKU's rule (or the default); the projection applies it through the outbox, like any change."""
    scope = sku or domain.DEFAULT_SCOPE
    async with transaction(pool) as conn:
        if sku is not None and not await repo.known_skus(conn, [sku]):
            raise field_error("sku", f"unknown sku '{sku}'")
        kind = body.buffer.kind if body.buffer else None
        value = body.buffer.value if body.buffer else None
        row = await repo.put_rule(conn, scope, kind, value, body.low_stock_threshold)
        await publish(conn, RULES_CHANGED, scope, {"scope": scope})
    return _rule_out(row)


async def delete_rule(pool: Pool, sku: str) -> None:
    async with transaction(pool) as conn:
        if not await repo.delete_rule(conn, sku):
            raise NotFound(f"no channel rule for sku '{sku}'")
        await publish(conn, RULES_CHANGED, sku, {"scope": sku})


async def list_rules(pool: Pool) -> RuleList:
    rules = [_rule_out(r) for r in await repo.list_rules(pool)]
    default = next((r for r in rules if r.sku is None), None)
    return RuleList(default=default, items=[r for r in rules if r.sku is not None])


# --- endless aisle ----------------------------------------------------------------------------------


async def endless_aisle(pool: Pool, sku: str, query: AisleQuery) -> AisleOut:
    """Where else `qty` of the SKU can be had right now: ship from where, pick up at which store nearby.

    Answers from inventory's live levels (not the channel projection): the till places the order at
    once, so it must see what a reservation would see, and no online channel buffer applies.
    """
    if not await repo.known_skus(pool, [sku]):
        raise NotFound(f"unknown sku '{sku}'")
    here = None
    if query.location_id is not None:
        origin = await repo.location_point(pool, query.location_id)
        if origin is None:
            raise field_error("location_id", f"unknown location '{query.location_id}'")
        lat, lon = origin["lat"], origin["lon"]
        here = await repo.available_at(pool, sku, query.location_id)
    else:
        assert query.lat is not None and query.lon is not None
        lat, lon = query.lat, query.lon
    rows = await repo.sources_of(pool, sku, lat, lon, query.qty, query.location_id)
    options = [(r, AisleOption(location_id=r["location_id"], name=r["name"], kind=r["kind"],
                               available=r["available"], distance_km=round(r["distance_km"], 3))) for r in rows]
    ship_from = [o for r, o in options if r["ship"]][: query.limit]
    pickup_at = [o for r, o in options if r["pickup"] and o.distance_km <= query.radius_km][: query.limit]
    return AisleOut(sku=sku, qty=query.qty, here=here, ship_from=ship_from, pickup_at=pickup_at)
