"""What the orders API does, one function per use case. Each runs inside one transaction: the caller's
(the Idempotency-Key claim's) when given a connection, or its own."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.orders import domain, placement
from services.orders import repository as repo
from services.orders.schemas import (
    AllocationOut,
    ChargeOut,
    FulfillmentOut,
    HistoryOut,
    LineOut,
    OrderList,
    OrderListQuery,
    OrderOut,
    PartialIn,
    PaymentIn,
    PriceOverrideOut,
    ReturnIn,
    ReturnLineIn,
    ReturnOut,
    SaleLineOut,
    SaleList,
    SaleOut,
    SalesQuery,
    TillSaleIn,
    TillSaleOut,
)
from shared.auth import Principal
from shared.db import Connection, Pool, transaction
from shared.errors import Forbidden, NotFound, field_error
from shared.outbox import publish_many
from shared.paging import decode_cursor, encode_cursor

SYSTEM_ACTOR = "system:sweeper"

# Placement lives in placement.py (one order) and group_placement.py (many at once); these names stay
# importable from here for the callers that place orders inside their own transaction (e-commerce).
Placement = placement.Placement
place_order = placement.place_order


# --- reading -----------------------------------------------------------------------------------------


async def get_order(db: Pool | Connection, order_id: uuid.UUID) -> OrderOut:
    found = await repo.read_order(db, order_id)
    if found is None:
        raise NotFound(f"unknown order '{order_id}'")
    return _order_out(*found)


def _order_out(row: asyncpg.Record, line_rows: list[asyncpg.Record], history: list[asyncpg.Record]) -> OrderOut:
    state = repo._order_state(row, line_rows)
    lines = []
    for line in state.lines:
        allocs = [a for a in state.allocations if a.line_no == line.line_no]
        lines.append(LineOut(
            sku=line.sku, qty=line.qty, unit_price=line.unit_price, amount=domain.money(line.unit_price * line.qty),
            fulfilled=sum(a.fulfilled for a in allocs), cancelled=sum(a.cancelled for a in allocs),
            returned=line.returned, open=sum(a.open for a in allocs), catalogue_price=line.catalogue_price,
            price_source=line.price_source,
            price_override=(PriceOverrideOut(reason=line.price_reason, by=row["placed_by"]) if line.price_reason
                            else None),
        ))
    ship_to = {"lat": row["ship_to_lat"], "lon": row["ship_to_lon"]} if row["ship_to_lat"] is not None else None
    return OrderOut(
        id=str(row["id"]), status=row["status"], channel=row["channel"], external_id=row["external_id"],
        selling_location_id=row["selling_location_id"], currency=row["currency"],
        fulfillment=FulfillmentOut(type=row["fulfillment_type"],
                                   location_id=row["pickup_location_id"] or _only_location(state), ship_to=ship_to),
        lines=lines, charges=[ChargeOut(**c) for c in state.charges.as_list()],
        lines_total=row["lines_total"], total=row["total"],
        allocations=[AllocationOut(sku=a.sku, location_id=a.location_id, qty=a.qty, fulfilled=a.fulfilled,
                                   cancelled=a.cancelled, open=a.open) for a in state.allocations],
        reserved_until=row["reserved_until"], paid_at=row["paid_at"], created_at=row["created_at"],
        history=[HistoryOut(event=h["event"], status=h["status"], at=h["at"], actor=h["actor"], detail=h["detail"])
                 for h in history],
        pickup_stage=domain.pickup_stage([h["event"] for h in history]),
    )


def _only_location(state: domain.Order) -> str | None:
    found = {a.location_id for a in state.allocations}
    return found.pop() if len(found) == 1 else None


async def list_orders(pool: Pool, query: OrderListQuery, principal: Principal) -> OrderList:
    """A store key lists only orders that involve its own location (asking for another is a 403, not an
    empty page that would read as "none there"); an order by id stays readable with its receipt."""
    location_id = query.location_id
    own = domain.store_location(principal.role, principal.location_id)
    if own is not None:
        if location_id not in (None, own):
            raise Forbidden(f"this store key lists only orders that involve {own}, not {location_id}")
        location_id = own
    # Newest first by (created_at, id): orders placed in one group share created_at, so the id breaks
    # the tie and a page ends inside a group without skipping the rest of it.
    after = decode_cursor("orders", query.cursor, (datetime, uuid.UUID)) if query.cursor else None
    ids = await repo.list_orders(pool, query.status, query.channel, location_id, after, query.limit)
    items = [await get_order(pool, order_id) for order_id in ids]
    last = items[-1] if len(items) == query.limit else None
    return OrderList(items=items, next_cursor=encode_cursor("orders", [last.created_at, last.id]) if last else None)


async def list_sales(pool: Pool, query: SalesQuery) -> SaleList:
    after = decode_cursor("sales", query.cursor, (int,))[0] if query.cursor else 0
    rows = await repo.list_sales(pool, query.business_day, query.channel, query.location_id, after, query.limit)
    items = [_sale_out(r) for r in rows]
    last = items[-1] if len(items) == query.limit else None
    return SaleList(items=items, next_cursor=encode_cursor("sales", [last.id]) if last else None)


def _sale_out(row: asyncpg.Record) -> SaleOut:
    return SaleOut(**{**dict(row), "lines": [SaleLineOut(**{k: v for k, v in ln.items() if k != "line_no"})
                                             for ln in row["lines"]]})


# --- lifecycle ---------------------------------------------------------------------------------------


async def _locked(conn: Connection, order_id: uuid.UUID) -> domain.Order:
    order = await repo.lock_order(conn, order_id)
    if order is None:
        raise NotFound(f"unknown order '{order_id}'")
    return order


def _may_act(principal: Principal, order: domain.Order, action: str) -> str | None:
    """Refuse what this key may not do to this order; returns the location a store key is confined to."""
    domain.check_may_act(order, principal.role, principal.location_id, action)
    return domain.store_location(principal.role, principal.location_id)


Events = list[tuple[str, str, dict[str, Any]]]


def _events(order_id: str, event: str, status: str, channel: str, **extra: Any) -> Events:
    return [(f"order.{event}", order_id, {"order_id": order_id, "event": event, "status": status,
                                           "channel": channel, **extra})]


async def pay(conn: Connection, order_id: uuid.UUID, body: PaymentIn, principal: Principal) -> OrderOut:
    """Record payment: placed -> paid (or a fulfilled, unpaid order stays fulfilled); stops the clock."""
    order = await _locked(conn, order_id)
    _may_act(principal, order, "pay")
    domain.check_can(order, "pay")
    total = order.total
    if body.amount is not None and domain.money(body.amount) != total:
        raise field_error("amount", f"the order totals {total}, not {body.amount}")
    status = "paid" if order.status == "placed" else order.status
    payment = {"amount": str(total), "provider": body.provider, "reference": body.reference,
               "recorded_by": principal.subject}
    await repo.set_status(conn, order_id, status, payment=payment)
    await repo.add_history(conn, order_id, "paid", status, principal.subject, {"reference": body.reference})
    await publish_many(conn, _events(order.id, "paid", status, order.channel, amount=str(total),
                                     provider=body.provider, reference=body.reference))
    return await get_order(conn, order_id)


async def fulfill(conn: Connection, order_id: uuid.UUID, body: PartialIn, principal: Principal) -> OrderOut:
    """Shipped or picked up: reserved units leave on-hand and reserved together; the sale is recorded."""
    order = await _locked(conn, order_id)
    only = _may_act(principal, order, "fulfill")
    takes = domain.take_open(order, _requests(body), "fulfill", only)
    reference = f"order:{order.id}"
    await repo.move_stock(conn, [(t.sku, t.location_id, -t.qty, -t.qty) for t in takes], "sale", reference,
                          "fulfilment", principal.subject)
    await repo.add_to_allocations(conn, order_id, takes, "fulfill")
    sales = [await repo.record_sale(conn, order, draft, reference, principal.subject)
             for draft in domain.fulfilment_sales(order, takes)]
    domain.apply_takes(order, takes, "fulfill")
    status = domain.status_after_takes(order)
    event = domain.event_after_takes("fulfill", status)
    await repo.set_status(conn, order_id, status, charges_recognized=True)
    detail = {"lines": _take_lines(takes), "sale_ids": [s["id"] for s in sales]}
    await repo.add_history(conn, order_id, event, status, principal.subject, detail)
    await publish_many(conn, _events(order.id, event, status, order.channel, **detail))
    return await get_order(conn, order_id)


async def cancel(conn: Connection, order_id: uuid.UUID, body: PartialIn, principal: Principal,
                 event: str | None = None) -> OrderOut:
    """Release what is still reserved: all of it, or the given quantities per line."""
    order = await _locked(conn, order_id)
    only = _may_act(principal, order, "cancel")  # a store's "cancel everything" is everything open there
    takes = domain.take_open(order, _requests(body), "cancel", only)
    await _release(conn, order, takes, principal.subject, body.reason, event)
    return await get_order(conn, order_id)


async def _release(conn: Connection, order: domain.Order, takes: list[domain.Take], actor: str,
                   reason: str | None, event: str | None = None) -> None:
    order_id = uuid.UUID(order.id)
    await repo.move_stock(conn, [(t.sku, t.location_id, 0, -t.qty) for t in takes], "release", f"order:{order.id}",
                          reason or event or "cancelled", actor)
    await repo.add_to_allocations(conn, order_id, takes, "cancel")
    domain.apply_takes(order, takes, "cancel")
    status = domain.status_after_takes(order)
    event = event or domain.event_after_takes("cancel", status)
    await repo.set_status(conn, order_id, status)
    detail = {"lines": _take_lines(takes), "reason": reason}
    await repo.add_history(conn, order_id, event, status, actor, detail)
    await publish_many(conn, _events(order.id, event, status, order.channel, **detail))


async def mark_pickup_stage(conn: Connection, order_id: uuid.UUID, stage: str, principal: Principal) -> OrderOut:
    """A pick-up order is being prepared, or is ready at the counter: recorded in its history (once per
    change of stage), status unchanged, so the shop can tell the customer."""
    order = await _locked(conn, order_id)
    _may_act(principal, order, "stage")
    domain.check_pickup_stage(order, stage)
    if domain.pickup_stage(await repo.history_events(conn, order_id)) != stage:
        event = domain.PICKUP_STAGE_EVENTS[stage]
        await repo.add_history(conn, order_id, event, order.status, principal.subject)
        await publish_many(conn, _events(order.id, event, order.status, order.channel))
    return await get_order(conn, order_id)


async def complete(conn: Connection, order_id: uuid.UUID, principal: Principal) -> OrderOut:
    """Close a fulfilled, paid order: nothing changes it any more."""
    order = await _locked(conn, order_id)
    _may_act(principal, order, "complete")
    domain.check_can(order, "complete")
    await repo.set_status(conn, order_id, "completed")
    await repo.add_history(conn, order_id, "completed", "completed", principal.subject)
    await publish_many(conn, _events(order.id, "completed", "completed", order.channel))
    return await get_order(conn, order_id)


async def return_goods(conn: Connection, order_id: uuid.UUID, body: ReturnIn, principal: Principal) -> ReturnOut:
    """Take fulfilled units back into stock at `location_id`; records a negative sale there."""
    principal.require_location(body.location_id)
    if not await repo.locations(conn, [body.location_id]):
        raise field_error("location_id", f"unknown location '{body.location_id}'")
    order = await _locked(conn, order_id)
    draft = domain.return_sale(order, [domain.Request(ln.sku, ln.qty) for ln in body.lines], body.location_id,
                               await repo.refunded(conn, order_id))
    reference = f"return:{order.id}:{uuid.uuid4()}"
    await repo.move_stock(conn, [(str(ln["sku"]), body.location_id, -int(ln["qty"]), 0)  # type: ignore[call-overload]
                                 for ln in draft.lines], "return", reference, body.reason, principal.subject)
    await repo.add_returned(conn, order_id, [(int(ln["line_no"]), -int(ln["qty"]))  # type: ignore[call-overload]
                                             for ln in draft.lines])
    sale = await repo.record_sale(conn, order, draft, reference, principal.subject)
    detail = {"lines": [{"sku": ln.sku, "qty": ln.qty} for ln in body.lines], "location_id": body.location_id,
              "sale_id": sale["id"], "reason": body.reason}
    await repo.set_status(conn, order_id, order.status)
    await repo.add_history(conn, order_id, "returned", order.status, principal.subject, detail)
    await publish_many(conn, _events(order.id, "returned", order.status, order.channel, **detail))
    return ReturnOut(order_id=order.id, status=order.status, location_id=body.location_id,  # type: ignore[arg-type]
                     lines=[ReturnLineIn(sku=ln.sku, qty=ln.qty) for ln in body.lines], sale=_sale_out(sale))


def _requests(body: PartialIn) -> list[domain.Request] | None:
    if body.lines is None:
        return None
    return [domain.Request(ln.sku, ln.qty, ln.location_id) for ln in body.lines]


def _take_lines(takes: list[domain.Take]) -> list[dict[str, Any]]:
    return [{"sku": t.sku, "location_id": t.location_id, "qty": t.qty} for t in takes]


# --- till sales --------------------------------------------------------------------------------------


async def till_sale(conn: Connection, body: TillSaleIn, principal: Principal,
                    max_discount_pct: Decimal) -> TillSaleOut:
    """A sale at the till, at catalogue prices unless overridden (domain.price_lines): on-hand goes
    down at once; tenders must sum to the total."""
    principal.require_location(body.location_id)
    skus = [ln.sku for ln in body.lines]
    domain.check_distinct_skus(skus)
    location = (await repo.locations(conn, [body.location_id])).get(body.location_id)
    if location is None:
        raise field_error("location_id", f"unknown location '{body.location_id}'")
    currencies, prices = await repo.sku_catalog(conn, skus)
    domain.check_catalog(skus, body.currency, currencies)
    charges = domain.charges_of([(c.kind, c.amount) for c in body.charges])
    priced = domain.price_lines("store", principal.role, [
        domain.PriceAsked(ln.sku, ln.qty, ln.unit_price, ln.price_override.reason if ln.price_override else None)
        for ln in body.lines], prices, max_discount_pct)
    domain.check_store_discount(principal.role, priced, charges, max_discount_pct)
    totals = domain.totals([(ln.qty, ln.unit_price) for ln in priced], charges)
    domain.check_tenders(totals.total, [t.amount for t in body.tenders])
    order_id = uuid.uuid4()
    sale_lines = [{"sku": ln.sku, "qty": ln.qty, "unit_price": ln.unit_price, "amount": ln.amount,
                   "location_id": body.location_id, "catalogue_price": ln.catalogue_price, "price_source": ln.source,
                   **({"price_override": {"reason": ln.reason, "by": principal.subject}} if ln.reason else {})}
                  for ln in priced]
    tenders = [t.model_dump(mode="json", exclude_none=True) for t in body.tenders]
    event = {"order_id": str(order_id), "event": "sold", "status": "fulfilled", "channel": "store",
             "location_id": body.location_id, "total": str(totals.total), "currency": body.currency,
             "lines": [{"sku": ln.sku, "qty": ln.qty} for ln in body.lines]}
    row = await repo.record_till_sale(conn, order_id=order_id, location_id=body.location_id, currency=body.currency,
                                      totals=totals, actor=principal.subject,
                                      lines=[(ln.sku, ln.qty, ln.unit_price, ln.catalogue_price, ln.source,
                                              ln.reason) for ln in priced],
                                      sale_lines=sale_lines, tenders=tenders, event=event)
    if row["short"] is not None:
        raise placement.insufficient(row["short"])
    return TillSaleOut(id=str(order_id), status="fulfilled", location_id=body.location_id, currency=body.currency,
                       total=totals.total, lines=[SaleLineOut(**ln) for ln in sale_lines], tenders=tenders,
                       sale_id=row["sale_id"], business_day=row["business_day"], sold_at=row["sold_at"])


# --- reservation expiry ------------------------------------------------------------------------------


async def expire_reservations(pool: Pool, now: datetime | None = None, batch: int = 200) -> int:
    """Release every unpaid order (online or store) whose reservation expired (by `now`, default the database's
    clock); returns how many orders were expired. Each batch is one transaction: due orders are
    locked first (skipping any a payment or cancel holds), then all their levels in (sku, location)
    order, so the sweep can never deadlock with placements."""
    expired = 0
    while True:
        async with transaction(pool) as conn:
            ids = await repo.due_orders(conn, now, batch)
            orders = [await repo.lock_order(conn, order_id) for order_id in ids]
            await repo.lock_levels(conn, [(a.sku, a.location_id) for o in orders if o for a in o.allocations
                                          if a.open > 0])
            for order in orders:
                assert order is not None
                takes = [domain.Take(a.line_no, a.sku, a.location_id, a.open) for a in order.allocations if a.open]
                await _release(conn, order, takes, SYSTEM_ACTOR, "reservation expired", "expired")
        expired += len(ids)
        if len(ids) < batch:
            return expired
