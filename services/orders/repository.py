"""All SQL of the orders service. Stock changes go through the functions of 0001_orders.sql, which
reach inventory only through inventory.lock_levels and inventory.apply_movement."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.inventory.domain import great_circle_km
from services.orders import domain
from services.orders.sourcing import Candidate
from shared.db import Connection, Pool

# One row per SKU, its sellable levels as two arrays: a row per level repeated the SKU's currency and
# price (a numeric, decoded into a Decimal each time) on ~18 rows per SKU, which cost the orders process
# more than the rest of the read (~0.2 ms per group of 13 SKUs) and PostgreSQL a row each to send.
CATALOG_AND_STOCK = """
SELECT q.sku, s.currency, s.price, lv.location_ids, lv.available
FROM unnest($1::text[]) AS q(sku)
LEFT JOIN inventory.skus s ON s.sku = q.sku
LEFT JOIN LATERAL (
    SELECT array_agg(l.location_id) AS location_ids, array_agg(l.on_hand - l.reserved - l.safety_stock) AS available
      FROM inventory.stock_levels l
     WHERE l.sku = s.sku AND l.location_id = ANY($2::text[]) AND l.on_hand - l.reserved - l.safety_stock > 0
) lv ON true
"""

PLACE_ORDER = """
SELECT short, placed_at, held FROM orders.place_order(
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
    $17::text[], $18::int[], $19::numeric[], $20::int[], $21::text[], $22::int[], $23::jsonb,
    $24::int, $25::numeric[], $26::text[], $27::text[])
"""

TILL_SALE = """
SELECT short, sale_id, business_day, sold_at FROM orders.record_till_sale(
    $1, $2, $3, $4, $5, $6, $7, $8, $9::text[], $10::int[], $11::numeric[], $12::jsonb, $13::jsonb, $14::jsonb,
    $15::numeric[], $16::text[], $17::text[])
"""

# (sku, qty, unit_price, catalogue_price, price_source, override reason) per order line
PricedRow = tuple[str, int, Decimal, Decimal, str, str | None]

ORDER_LINES = """
SELECT l.line_no, l.sku, l.qty AS line_qty, l.unit_price, l.returned_qty,
       l.catalogue_price, l.price_source, l.price_reason,
       a.location_id, a.qty, a.fulfilled_qty, a.cancelled_qty
FROM orders.order_lines l
JOIN orders.allocations a ON a.order_id = l.order_id AND a.line_no = l.line_no
WHERE l.order_id = $1
ORDER BY l.line_no, a.location_id
"""

SALE_COLUMNS = ("id, kind, channel, order_id::text AS order_id, location_id, business_day, currency, lines,"
                " goods_amount, shipping, tax, discount, total, tenders, reference, occurred_at")


@dataclass(frozen=True)
class Site:
    """What sourcing needs to know about a location."""

    id: str
    lat: float
    lon: float
    ship: bool
    pickup: bool
    priority: int


@dataclass(frozen=True)
class Sites:
    """Every location by id, and the shipping ones (where a ship order may come from), built once per
    load: with a thousand stores, rebuilding the shipping set per order cost more than sourcing it."""

    by_id: Mapping[str, Site]
    shipping: Mapping[str, Site]

    @classmethod
    def of(cls, sites: Iterable[Site]) -> Sites:
        by_id = {site.id: site for site in sites}
        return cls(by_id, {site.id: site for site in by_id.values() if site.ship})


class LocationDirectory:
    """Locations, read at most every `ttl_s` seconds (and at once when an unknown id is asked for).

    Placement asks for them on every order; they change a few times a day. A location whose `ship` or
    `pickup` flag was just switched may be used for up to `ttl_s` more: stock correctness does not
    depend on it (every reservation is checked under lock), only the choice of location does.
    """

    def __init__(self, ttl_s: float = 5.0) -> None:
        self._ttl = ttl_s
        self._sites = Sites({}, {})
        self._loaded_at = -math.inf

    async def sites(self, db: Pool | Connection, need: Sequence[str] = ()) -> Sites:
        now = time.monotonic()
        if now - self._loaded_at > self._ttl or any(i not in self._sites.by_id for i in need):
            rows = await db.fetch("SELECT id, lat, lon, ship, pickup, priority FROM inventory.locations")
            self._sites = Sites.of(Site(r["id"], r["lat"], r["lon"], r["ship"], r["pickup"], r["priority"])
                                   for r in rows)
            self._loaded_at = now
        return self._sites


@dataclass(frozen=True)
class StockSnapshot:
    """Each SKU's catalogue currency and price (absent if unknown) and its sellable units per
    location, read without locks: sourcing works on it, the reservation checks again under lock."""

    catalog: dict[str, str]
    levels: dict[str, list[tuple[str, int]]]
    prices: dict[str, Decimal] = field(default_factory=dict)

    def candidates(self, skus: Sequence[str], allowed: Mapping[str, Site],
                   ship_to: tuple[float, float] | None) -> dict[str, list[Candidate]]:
        """Where each of `skus` can come from among the `allowed` sites, with the distance to `ship_to`."""
        km: dict[str, float | None] = {}  # per site, not per (SKU, site)
        stock: dict[str, list[Candidate]] = {}
        for sku in skus:
            found = []
            for location_id, available in self.levels.get(sku, ()):
                site = allowed.get(location_id)
                if site is None:
                    continue
                if location_id not in km:
                    km[location_id] = great_circle_km(ship_to[0], ship_to[1], site.lat, site.lon) if ship_to else None
                found.append(Candidate(location_id, available, km[location_id], site.priority))
            if found:
                stock[sku] = found
        return stock


async def read_stock(db: Pool | Connection, skus: Sequence[str], sites: Collection[str]) -> StockSnapshot:
    """One round trip: the catalogue entries of `skus` and their sellable units at the `sites` (ids)."""
    rows = await db.fetch(CATALOG_AND_STOCK, list(skus), list(sites))
    catalog: dict[str, str] = {}
    prices: dict[str, Decimal] = {}
    levels: dict[str, list[tuple[str, int]]] = {}
    for sku, currency, price, location_ids, available in rows:
        if currency is None:
            continue
        catalog[sku] = currency
        prices[sku] = price
        if location_ids is not None:  # NULL: no sellable level at these sites
            levels.setdefault(sku, []).extend(zip(location_ids, available, strict=True))
    return StockSnapshot(catalog, levels, prices)


async def locations(db: Pool | Connection, ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT id, kind, ship, pickup, timezone FROM inventory.locations WHERE id = ANY($1)",
                          list(set(ids)))
    return {r["id"]: r for r in rows}


async def sku_catalog(db: Pool | Connection, skus: list[str]) -> tuple[dict[str, str], dict[str, Decimal]]:
    """Each known SKU's catalogue currency and price."""
    rows = await db.fetch("SELECT sku, currency, price FROM inventory.skus WHERE sku = ANY($1)", skus)
    return {r["sku"]: r["currency"] for r in rows}, {r["sku"]: r["price"] for r in rows}


async def place_order(conn: Connection, *, order_id: uuid.UUID, channel: str, external_id: str | None,
                      selling_location_id: str | None, currency: str, fulfillment_type: str,
                      pickup_location_id: str | None, ship_to: tuple[float, float] | None,
                      totals: domain.Totals, reserved_until: datetime | None, actor: str, unpaid_cap: int | None,
                      lines: Sequence[PricedRow],
                      allocations: Sequence[tuple[int, str, int]], event: dict[str, Any]) -> asyncpg.Record:
    """Lock, check, reserve and write the order in one call; `short` is set (and nothing written)
    when an allocation cannot be reserved, `held` (the units the actor holds unpaid) when the order
    would pass `unpaid_cap`."""
    lat, lon = ship_to if ship_to else (None, None)
    c = totals.charges
    return await conn.fetchrow(
        PLACE_ORDER, order_id, channel, external_id, selling_location_id, currency, fulfillment_type,
        pickup_location_id, lat, lon, totals.lines_total, c.shipping, c.tax, c.discount, totals.total,
        reserved_until, actor,
        [ln[0] for ln in lines], [ln[1] for ln in lines], [ln[2] for ln in lines],
        [a[0] for a in allocations], [a[1] for a in allocations], [a[2] for a in allocations], event,
        unpaid_cap, [ln[3] for ln in lines], [ln[4] for ln in lines], [ln[5] for ln in lines],
    )


PLACE_BATCH = """
SELECT idx, outcome, stored_status, stored_response, short_lines FROM orders.place_batch(
    $1::text[], $2::text[], $3::bytea[], $4::bool[], $5::jsonb[],
    $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::float8[],
    $14::float8[], $15::numeric[], $16::numeric[], $17::numeric[], $18::numeric[], $19::numeric[],
    $20::timestamptz[], $21::text[], $22::jsonb[], $23::timestamptz,
    $24::int[], $25::int[], $26::text[], $27::int[], $28::numeric[],
    $29::int[], $30::int[], $31::text[], $32::text[], $33::int[],
    $34::int[], $35::numeric[], $36::text[], $37::text[])
"""


@dataclass(frozen=True)
class BatchOrder:
    """One order of a group placement. Without `response` it is not placed: only its key is checked
    (the service already has its answer, an error, unless the key was used before)."""

    scope: str
    key: str
    fingerprint: bytes
    response: dict[str, Any] | None = None
    order_id: uuid.UUID | None = None
    channel: str | None = None
    external_id: str | None = None
    selling_location_id: str | None = None
    currency: str | None = None
    fulfillment_type: str | None = None
    pickup_location_id: str | None = None
    ship_to: tuple[float, float] | None = None
    totals: domain.Totals | None = None
    reserved_until: datetime | None = None
    actor: str | None = None
    event: dict[str, Any] | None = None
    unpaid_cap: int | None = None  # the units its actor may hold unpaid (store keys), None: no limit
    lines: Sequence[PricedRow] = ()
    allocations: Sequence[tuple[int, str, str, int]] = ()  # (line_no, sku, location_id, qty)


async def place_batch(conn: Connection, orders: Sequence[BatchOrder], placed_at: datetime) -> list[asyncpg.Record]:
    """orders.place_batch: one statement, so outside a transaction block it is its own transaction.
    Rows (idx, outcome, stored_status, stored_response, short_lines), idx 1-based into `orders`."""
    totals = [o.totals for o in orders]
    line_orders, line_nos, line_skus, line_qtys, line_prices = [], [], [], [], []
    line_catalogue, line_sources, line_reasons = [], [], []
    alloc_orders, alloc_lines, alloc_skus, alloc_locations, alloc_qtys = [], [], [], [], []
    for n, o in enumerate(orders, 1):
        for line_no, (sku, qty, price, listed, source, reason) in enumerate(o.lines, 1):
            line_orders.append(n)
            line_nos.append(line_no)
            line_skus.append(sku)
            line_qtys.append(qty)
            line_prices.append(price)
            line_catalogue.append(listed)
            line_sources.append(source)
            line_reasons.append(reason)
        for line_no, sku, location_id, qty in o.allocations:
            alloc_orders.append(n)
            alloc_lines.append(line_no)
            alloc_skus.append(sku)
            alloc_locations.append(location_id)
            alloc_qtys.append(qty)
    return await conn.fetch(
        PLACE_BATCH,
        [o.scope for o in orders], [o.key for o in orders], [o.fingerprint for o in orders],
        [o.response is not None for o in orders], [o.response for o in orders],
        [o.order_id for o in orders], [o.channel for o in orders], [o.external_id for o in orders],
        [o.selling_location_id for o in orders], [o.currency for o in orders], [o.fulfillment_type for o in orders],
        [o.pickup_location_id for o in orders], [o.ship_to[0] if o.ship_to else None for o in orders],
        [o.ship_to[1] if o.ship_to else None for o in orders],
        [t.lines_total if t else None for t in totals], [t.charges.shipping if t else None for t in totals],
        [t.charges.tax if t else None for t in totals], [t.charges.discount if t else None for t in totals],
        [t.total if t else None for t in totals], [o.reserved_until for o in orders], [o.actor for o in orders],
        [o.event for o in orders], placed_at,
        line_orders, line_nos, line_skus, line_qtys, line_prices,
        alloc_orders, alloc_lines, alloc_skus, alloc_locations, alloc_qtys,
        [o.unpaid_cap for o in orders], line_catalogue, line_sources, line_reasons,
    )


async def record_till_sale(conn: Connection, *, order_id: uuid.UUID, location_id: str, currency: str,
                           totals: domain.Totals, actor: str, lines: Sequence[PricedRow],
                           sale_lines: list[dict[str, Any]], tenders: list[dict[str, Any]],
                           event: dict[str, Any]) -> asyncpg.Record:
    c = totals.charges
    return await conn.fetchrow(
        TILL_SALE, order_id, location_id, currency, totals.lines_total, c.tax, c.discount, totals.total, actor,
        [ln[0] for ln in lines], [ln[1] for ln in lines], [ln[2] for ln in lines], sale_lines, tenders, event,
        [ln[3] for ln in lines], [ln[4] for ln in lines], [ln[5] for ln in lines],
    )


def _order_state(row: asyncpg.Record, line_rows: list[asyncpg.Record]) -> domain.Order:
    lines: dict[int, domain.Line] = {}
    allocations = []
    for r in line_rows:
        lines.setdefault(r["line_no"], domain.Line(r["line_no"], r["sku"], r["line_qty"], r["unit_price"],
                                                   r["returned_qty"], r["catalogue_price"], r["price_source"],
                                                   r["price_reason"]))
        allocations.append(domain.Allocation(r["line_no"], r["sku"], r["location_id"], r["qty"],
                                             r["fulfilled_qty"], r["cancelled_qty"]))
    return domain.Order(
        id=str(row["id"]), status=row["status"], channel=row["channel"], currency=row["currency"],
        selling_location_id=row["selling_location_id"], pickup_location_id=row["pickup_location_id"],
        paid=row["paid_at"] is not None, charges_recognized=row["charges_recognized"],
        charges=domain.Charges(row["shipping"], row["tax"], row["discount"]), total=row["total"],
        lines=list(lines.values()), allocations=allocations, placed_by=row["placed_by"],
    )


async def lock_order(conn: Connection, order_id: uuid.UUID) -> domain.Order | None:
    """The order with its lines and allocations, its row locked until the transaction ends.
    Lock order everywhere: the order row first, then stock levels in (sku, location) order."""
    row = await conn.fetchrow("SELECT * FROM orders.orders WHERE id = $1 FOR UPDATE", order_id)
    if row is None:
        return None
    return _order_state(row, await conn.fetch(ORDER_LINES, order_id))


async def history_events(db: Pool | Connection, order_id: uuid.UUID) -> list[str]:
    return [r["event"] for r in await db.fetch(
        "SELECT event FROM orders.status_history WHERE order_id = $1 ORDER BY seq", order_id)]


async def read_order(db: Pool | Connection, order_id: uuid.UUID) -> tuple[asyncpg.Record, list[asyncpg.Record],
                                                                        list[asyncpg.Record]] | None:
    row = await db.fetchrow("SELECT * FROM orders.orders WHERE id = $1", order_id)
    if row is None:
        return None
    lines = await db.fetch(ORDER_LINES, order_id)
    history = await db.fetch(
        "SELECT event, status, at, actor, detail FROM orders.status_history WHERE order_id = $1 ORDER BY seq",
        order_id)
    return row, lines, history


async def list_orders(db: Pool | Connection, status: str | None, channel: str | None, location_id: str | None,
                      after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[uuid.UUID]:
    """Newest first, strictly after the (created_at, id) of the previous page's last order. The plain
    `created_at <= $4` repeats the row comparison in a form the orders_created index can range-scan."""
    created_at, order_id = after if after is not None else (None, None)
    rows = await db.fetch(
        """
        SELECT o.id FROM orders.orders o
        WHERE ($1::text IS NULL OR o.status = $1) AND ($2::text IS NULL OR o.channel = $2)
          AND ($3::text IS NULL OR o.selling_location_id = $3 OR o.pickup_location_id = $3
               OR EXISTS (SELECT 1 FROM orders.allocations a WHERE a.order_id = o.id AND a.location_id = $3))
          AND ($4::timestamptz IS NULL OR (o.created_at <= $4 AND (o.created_at, o.id) < ($4, $5::uuid)))
        ORDER BY o.created_at DESC, o.id DESC
        LIMIT $6
        """,
        status, channel, location_id, created_at, order_id, limit,
    )
    return [r["id"] for r in rows]


async def move_stock(conn: Connection, changes: Sequence[tuple[str, str, int, int]], kind: str, reference: str,
                     reason: str | None, actor: str) -> None:
    """(sku, location, on_hand_delta, reserved_delta) changes as movements of one kind."""
    if not changes:
        return
    await conn.execute(
        "SELECT orders.move_stock($1::text[], $2::text[], $3, $4::int[], $5::int[], $6, $7, $8)",
        [c[0] for c in changes], [c[1] for c in changes], kind, [c[2] for c in changes], [c[3] for c in changes],
        reference, reason, actor,
    )


async def add_to_allocations(conn: Connection, order_id: uuid.UUID, takes: Sequence[domain.Take], kind: str) -> None:
    column = "fulfilled_qty" if kind == "fulfill" else "cancelled_qty"
    await conn.execute(
        f"UPDATE orders.allocations a SET {column} = a.{column} + t.qty"
        " FROM unnest($2::int[], $3::text[], $4::int[]) AS t(line_no, location_id, qty)"
        " WHERE a.order_id = $1 AND a.line_no = t.line_no AND a.location_id = t.location_id",
        order_id, [t.line_no for t in takes], [t.location_id for t in takes], [t.qty for t in takes],
    )


async def add_returned(conn: Connection, order_id: uuid.UUID, returned: Sequence[tuple[int, int]]) -> None:
    await conn.execute(
        "UPDATE orders.order_lines l SET returned_qty = l.returned_qty + t.qty"
        " FROM unnest($2::int[], $3::int[]) AS t(line_no, qty) WHERE l.order_id = $1 AND l.line_no = t.line_no",
        order_id, [r[0] for r in returned], [r[1] for r in returned],
    )


async def set_status(conn: Connection, order_id: uuid.UUID, status: str, *, charges_recognized: bool | None = None,
                     payment: dict[str, Any] | None = None) -> None:
    """Change the status; leaving `placed` (or being paid) stops the reservation clock."""
    await conn.execute(
        """
        UPDATE orders.orders SET status = $2, updated_at = now(),
               charges_recognized = coalesce($3, charges_recognized),
               paid_at = CASE WHEN $4::jsonb IS NULL THEN paid_at ELSE now() END,
               payment = coalesce($4::jsonb, payment),
               reserved_until = CASE WHEN $2 = 'placed' AND $4::jsonb IS NULL THEN reserved_until END
        WHERE id = $1
        """,
        order_id, status, charges_recognized, payment,
    )


async def add_history(conn: Connection, order_id: uuid.UUID, event: str, status: str, actor: str,
                      detail: dict[str, Any] | None = None) -> datetime:
    return await conn.fetchval(
        "INSERT INTO orders.status_history (order_id, seq, event, status, actor, detail)"
        " SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5 FROM orders.status_history WHERE order_id = $1"
        " RETURNING at",
        order_id, event, status, actor, detail,
    )


async def record_sale(conn: Connection, order: domain.Order, draft: domain.SaleDraft, reference: str,
                      actor: str) -> asyncpg.Record:
    c = draft.charges
    return await conn.fetchrow(
        f"SELECT {SALE_COLUMNS} FROM orders.record_sale($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13)",
        draft.kind, order.channel, uuid.UUID(order.id), draft.location_id, order.currency, draft.lines, draft.goods,
        c.shipping, c.tax, c.discount, draft.total, reference, actor,
    )


async def refunded(conn: Connection, order_id: uuid.UUID) -> Decimal:
    """What the order's returns have refunded so far (positive)."""
    return await conn.fetchval(
        "SELECT coalesce(-sum(total), 0) FROM orders.sales WHERE order_id = $1 AND kind = 'return'", order_id)


async def due_orders(conn: Connection, now: datetime | None, limit: int) -> list[uuid.UUID]:
    """Unpaid orders whose reservation has expired, locked; ones another transaction holds are skipped
    (a payment in flight wins, and two sweepers never take the same order)."""
    rows = await conn.fetch(
        "SELECT id FROM orders.orders WHERE status = 'placed' AND reserved_until <= coalesce($1, now())"
        " ORDER BY reserved_until LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit,
    )
    return [r["id"] for r in rows]


async def lock_levels(conn: Connection, pairs: Sequence[tuple[str, str]]) -> None:
    if pairs:
        unique = sorted(set(pairs))
        await conn.execute("SELECT count(*) FROM inventory.lock_levels($1::text[], $2::text[])",
                           [p[0] for p in unique], [p[1] for p in unique])


async def list_sales(db: Pool | Connection, business_day: date, channel: str | None, location_id: str | None,
                     after: int, limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        f"SELECT {SALE_COLUMNS} FROM orders.sales"
        " WHERE business_day = $1 AND ($2::text IS NULL OR channel = $2) AND ($3::text IS NULL OR location_id = $3)"
        " AND id > $4 ORDER BY id LIMIT $5",
        business_day, channel, location_id, after, limit,
    )


async def reservation_drift(db: Pool | Connection) -> list[asyncpg.Record]:
    """Levels whose reserved units differ from what orders still hold open there (must always be empty)."""
    return await db.fetch(
        """
        SELECT l.sku, l.location_id, l.reserved, coalesce(o.open, 0) AS open
        FROM inventory.stock_levels l
        LEFT JOIN (SELECT ol.sku, a.location_id, sum(a.qty - a.fulfilled_qty - a.cancelled_qty) AS open
                   FROM orders.allocations a
                   JOIN orders.order_lines ol USING (order_id, line_no)
                   GROUP BY 1, 2) o USING (sku, location_id)
        WHERE l.reserved <> coalesce(o.open, 0)
        """
    )
