"""Inventory HTTP: parse, authorize, call a use case, render. Reads are open to every role."""

from __future__ import annotations

import orjson
from aiohttp import web

from services.inventory import repository as repo
from services.inventory import use_cases
from services.inventory.schemas import (
    EventsQuery,
    LevelList,
    LevelListQuery,
    LevelOut,
    LevelRow,
    LocationId,
    LocationIn,
    LocationList,
    LocationOut,
    MovementIn,
    MovementList,
    MovementListQuery,
    MovementOut,
    MovementRecord,
    NearbyOut,
    NearbyQuery,
    SafetyStockIn,
    Sku,
    SkuIn,
    SkuList,
    SkuListQuery,
    SkuOut,
    StockOut,
)
from shared.errors import NotFound
from shared.http.api import Api, Call, Reply
from shared.http.sse import stream_events
from shared.outbox import Event
from shared.paging import decode_cursor, encode_cursor

api = Api("inventory", path_types={"sku": Sku, "location_id": LocationId})

CATALOG_WRITERS = ("admin", "ops")
STOCK_WRITERS = ("admin", "ops", "store")
STREAM_FAMILIES = ["stock"]  # what GET /v1/stock/stream carries (the only family this hub reads)


@api.put("/v1/locations/{location_id}", body=LocationIn, response=LocationOut, roles=CATALOG_WRITERS, also=(201,))
async def put_location(call: Call[LocationIn, None]) -> Reply:
    """Create or update a location (200 when updated, 201 when created)."""
    created, row = await use_cases.put_location(call.pool, call.path("location_id"), call.body)
    return Reply(201 if created else 200, LocationOut.model_validate(dict(row)))


@api.get("/v1/locations", response=LocationList)
async def list_locations(call: Call[None, None]) -> LocationList:
    """Every location."""
    return LocationList(items=[LocationOut.model_validate(dict(r)) for r in await repo.list_locations(call.pool)])


@api.get("/v1/locations/{location_id}", response=LocationOut, extra_responses={404: "unknown location"})
async def get_location(call: Call[None, None]) -> LocationOut:
    """One location."""
    row = await repo.get_location(call.pool, call.path("location_id"))
    if row is None:
        raise NotFound(f"unknown location '{call.path('location_id')}'")
    return LocationOut.model_validate(dict(row))


@api.put("/v1/skus/{sku}", body=SkuIn, response=SkuOut, roles=CATALOG_WRITERS, also=(201,))
async def put_sku(call: Call[SkuIn, None]) -> Reply:
    """Create or update a SKU (200 when updated, 201 when created)."""
    created, row = await use_cases.put_sku(call.pool, call.path("sku"), call.body)
    return Reply(201 if created else 200, SkuOut.model_validate(dict(row)))


@api.get("/v1/skus", query=SkuListQuery, response=SkuList)
async def list_skus(call: Call[None, SkuListQuery]) -> SkuList:
    """SKUs in id order, a page at a time (pass `cursor` = the previous page's next_cursor); `q` finds
    those whose code starts with it or whose name contains it (case-insensitive)."""
    after = decode_cursor("skus", call.query.cursor, (str,))[0] if call.query.cursor else None
    rows = await repo.list_skus(call.pool, after, call.query.limit, call.query.q)
    items = [SkuOut.model_validate(dict(r)) for r in rows]
    last = items[-1] if len(items) == call.query.limit else None
    return SkuList(items=items, next_cursor=encode_cursor("skus", [last.sku]) if last else None)


@api.get("/v1/skus/{sku}", response=SkuOut, extra_responses={404: "unknown sku"})
async def get_sku(call: Call[None, None]) -> SkuOut:
    """One SKU."""
    row = await repo.get_sku(call.pool, call.path("sku"))
    if row is None:
        raise NotFound(f"unknown sku '{call.path('sku')}'")
    return SkuOut.model_validate(dict(row))


@api.post("/v1/stock/movements", body=MovementIn, response=MovementOut, status=201, roles=STOCK_WRITERS,
          idempotent=True, extra_responses={409: "insufficient-stock, or Idempotency-Key reused"})
async def post_movement(call: Call[MovementIn, None]) -> Reply:
    """Receive, adjust, count or transfer stock; a store key only at its own location."""
    call.principal.require_location(call.body.location_id)
    actor = call.principal.subject

    async def work(conn):  # type: ignore[no-untyped-def]
        return 201, await use_cases.record_movement(conn, call.body, actor)

    return await call.once(work)


@api.get("/v1/stock/movements", query=MovementListQuery, response=MovementList)
async def list_movements(call: Call[None, MovementListQuery]) -> MovementList:
    """The movement journal, oldest first, a page at a time (pass `cursor` = the previous next_cursor)."""
    q = call.query
    name = "stock_movements" if q.order == "oldest" else "stock_movements_newest"  # a cursor keeps its order
    after = decode_cursor(name, q.cursor, (int,))[0] if q.cursor else 0
    rows = await repo.list_movements(call.pool, q.sku, q.location_id, after, q.limit, q.order == "newest")
    items = [MovementRecord.model_validate(dict(r)) for r in rows]
    last = items[-1] if len(items) == q.limit else None
    return MovementList(items=items, next_cursor=encode_cursor(name, [last.id]) if last else None)


@api.get("/v1/stock", query=LevelListQuery, response=LevelList)
async def list_levels(call: Call[None, LevelListQuery]) -> LevelList:
    """Stock levels by location, then SKU: on hand, reserved, safety stock, available; `below_safety`
    keeps those whose unreserved units are under their safety stock. A page at a time (`cursor`)."""
    q = call.query
    after = tuple(decode_cursor("stock_levels", q.cursor, (str, str))) if q.cursor else ("", "")
    rows = await repo.list_levels(call.pool, q.location_id, q.sku_prefix, q.below_safety, after,  # type: ignore[arg-type]
                                  q.limit)
    items = [LevelRow.model_validate(dict(r)) for r in rows]
    last = items[-1] if len(items) == q.limit else None
    cursor = encode_cursor("stock_levels", [last.location_id, last.sku]) if last else None
    return LevelList(items=items, next_cursor=cursor)


@api.get("/v1/stock/{sku}", response=StockOut, extra_responses={404: "unknown sku"})
async def get_stock(call: Call[None, None]) -> StockOut:
    """Stock of a SKU at every location that has a level for it."""
    return await use_cases.stock(call.pool, call.path("sku"))


@api.put("/v1/stock/{sku}/locations/{location_id}/safety-stock", body=SafetyStockIn, response=LevelOut,
         roles=STOCK_WRITERS, extra_responses={404: "unknown sku or location"})
async def put_safety_stock(call: Call[SafetyStockIn, None]) -> LevelOut:
    """Units held back from sale at one location."""
    location_id = call.path("location_id")
    call.principal.require_location(location_id)
    return await use_cases.set_safety_stock(call.pool, call.path("sku"), location_id, call.body.safety_stock)


@api.get("/v1/stock/{sku}/nearby", query=NearbyQuery, response=NearbyOut, extra_responses={404: "unknown sku"})
async def get_nearby(call: Call[None, NearbyQuery]) -> NearbyOut:
    """Locations that have the SKU, nearest first, from a point or from a store."""
    return await use_cases.nearby(call.pool, call.path("sku"), call.query)


def _render(event: Event) -> bytes:
    return orjson.dumps({"id": event.id, "topic": event.topic, "created_at": event.created_at, **event.payload})


@api.get("/v1/events", query=EventsQuery, produces="text/event-stream",
         extra_responses={410: "stream-resync-required: Last-Event-ID from before the retention window"})
async def get_events(call: Call[None, EventsQuery]) -> web.StreamResponse:
    """Stock changes as Server-Sent Events; send Last-Event-ID to resume with nothing lost."""
    sku, location_id = call.query.sku, call.query.location_id

    def keep(event: Event) -> bool:
        return (sku is None or event.key == sku) and (
            location_id is None or event.payload.get("location_id") == location_id
        )

    return await stream_events(call.request, families=STREAM_FAMILIES, keep=keep, render=_render)
