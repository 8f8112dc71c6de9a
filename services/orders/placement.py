"""Placing an order: the checks and sourcing every placement makes, and the one-order use case.

Group placement (`group_placement.py`) places many orders in one transaction with the same pieces:
`draft_order` (who may place what, where stock may come from), `price` (each line's price against
the catalogue of a snapshot, domain.price_lines), `allocate` (sourcing against the snapshot),
`placed_out`/`placed_event` (the 201 body and the order.placed event).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.orders import domain
from services.orders import repository as repo
from services.orders.schemas import (
    AllocationOut,
    ChargeOut,
    FulfillmentOut,
    HistoryOut,
    LineOut,
    OrderIn,
    OrderOut,
    PriceOverrideOut,
)
from services.orders.sourcing import Allocation, LineRequest, SourcingPolicy, Unfillable
from shared.auth import Principal
from shared.db import Connection
from shared.errors import Conflict, Forbidden, InsufficientStock, ValidationFailed, field_error

PLACEMENT_ATTEMPTS = 3  # re-source when the snapshot lost a race to a concurrent order


@dataclass(frozen=True)
class Placement:
    """What placement is configured with: the sourcing policy, the location directory, the TTLs, and
    the store keys' limits (settings.py says why each default)."""

    policy: SourcingPolicy
    directory: repo.LocationDirectory
    reservation_ttl_s: int
    store_reservation_ttl_s: int = 900
    store_max_discount_pct: Decimal = Decimal("20")
    max_unpaid_units_per_store_key: int = 200  # 0: no limit

    def unpaid_cap(self, draft: Draft) -> int | None:
        """The units this order's key may hold unpaid, or None: only store keys are capped."""
        cap = self.max_unpaid_units_per_store_key
        return cap if draft.role == "store" and cap > 0 else None


@dataclass(frozen=True)
class Draft:
    """An order checked against its principal and the locations, before any stock is read."""

    order_id: uuid.UUID
    body: OrderIn
    selling: str | None
    charges: domain.Charges
    eligible: Mapping[str, repo.Site]  # where its stock may come from, by id
    ship_to: tuple[float, float] | None
    requests: list[LineRequest]
    actor: str
    role: str

    @property
    def skus(self) -> list[str]:
        return [ln.sku for ln in self.body.lines]

    @property
    def units(self) -> int:
        return sum(ln.qty for ln in self.body.lines)


@dataclass(frozen=True)
class Priced:
    """An order's lines priced against the catalogue, and its totals."""

    lines: list[domain.PricedLine]
    totals: domain.Totals

    def rows(self) -> list[tuple[str, int, Decimal, Decimal, str, str | None]]:
        """(sku, qty, unit_price, catalogue_price, price_source, reason) per line, as the SQL takes them."""
        return [(ln.sku, ln.qty, ln.unit_price, ln.catalogue_price, ln.source, ln.reason) for ln in self.lines]


def _selling_location(body: OrderIn, principal: Principal) -> str | None:
    """Who may place what: shop places online orders; a store key places store orders sold at its own
    location; admin and ops place either (a store order names its selling location)."""
    if principal.role == "shop" and body.channel != "online":
        raise Forbidden("a shop key places online orders only")
    if principal.role == "store":
        if body.channel != "store":
            raise Forbidden("a store key places store orders only")
        selling = body.selling_location_id or principal.location_id
        principal.require_location(selling or "")
        return selling
    if body.channel == "store" and body.selling_location_id is None:
        raise field_error("selling_location_id", "a store order names the store that sold it")
    if body.channel == "online" and body.selling_location_id is not None:
        raise field_error("selling_location_id", "only a store order has a selling location")
    return body.selling_location_id


def named_locations(body: OrderIn, principal: Principal) -> list[str]:
    """The locations an order names (the directory reloads at once when one is new to it)."""
    named = (body.selling_location_id or principal.location_id, body.fulfillment.location_id)
    return [x for x in named if x]


def _eligible_sites(body: OrderIn, selling: str | None, sites: repo.Sites) -> Mapping[str, repo.Site]:
    """Check the locations the order names; return where its stock may come from."""
    named = {"selling_location_id": selling, "fulfillment.location_id": body.fulfillment.location_id}
    errors = [{"field": f, "problem": f"unknown location '{v}'"} for f, v in named.items()
              if v and v not in sites.by_id]
    if errors:
        raise ValidationFailed(errors)
    ful = body.fulfillment
    if ful.location_id is None:
        return sites.shipping
    target = sites.by_id[ful.location_id]
    if ful.type == "pickup" and not target.pickup:
        raise field_error("fulfillment.location_id", f"location '{target.id}' does not offer pick-up")
    if ful.type == "ship" and not target.ship:
        raise field_error("fulfillment.location_id", f"location '{target.id}' does not ship")
    return {target.id: target}


def draft_order(body: OrderIn, principal: Principal, sites: repo.Sites) -> Draft:
    """Everything placement checks before reading stock (403/422 problems)."""
    selling = _selling_location(body, principal)
    domain.check_distinct_skus([ln.sku for ln in body.lines])
    charges = domain.charges_of([(c.kind, c.amount) for c in body.charges])
    eligible = _eligible_sites(body, selling, sites)
    ful = body.fulfillment
    return Draft(
        order_id=uuid.uuid4(), body=body, selling=selling, charges=charges, eligible=eligible,
        ship_to=(ful.ship_to.lat, ful.ship_to.lon) if ful.ship_to else None,
        requests=[LineRequest(i + 1, ln.sku, ln.qty) for i, ln in enumerate(body.lines)], actor=principal.subject,
        role=principal.role,
    )


def price(draft: Draft, placement: Placement, snapshot: repo.StockSnapshot) -> Priced:
    """Check the catalogue (422 unknown SKU or another currency) and price every line (403/422, see
    domain.price_lines); the totals follow from those prices."""
    domain.check_catalog(draft.skus, draft.body.currency, snapshot.catalog)
    asked = [domain.PriceAsked(ln.sku, ln.qty, ln.unit_price, ln.price_override.reason if ln.price_override else None)
             for ln in draft.body.lines]
    lines = domain.price_lines(draft.body.channel, draft.role, asked, snapshot.prices,
                               placement.store_max_discount_pct)
    domain.check_store_discount(draft.role, lines, draft.charges, placement.store_max_discount_pct)
    return Priced(lines, domain.totals([(ln.qty, ln.unit_price) for ln in lines], draft.charges))


def allocate(draft: Draft, policy: SourcingPolicy, snapshot: repo.StockSnapshot) -> list[Allocation]:
    """Source the order against a snapshot (priced first, so its SKUs are known): 409
    insufficient-stock when no combination of eligible locations can fill it."""
    try:
        return policy.allocate(draft.requests, snapshot.candidates(draft.skus, draft.eligible, draft.ship_to))
    except Unfillable as exc:
        raise insufficient(exc.short) from None


def reserved_until(draft: Draft, placement: Placement, now: datetime) -> datetime | None:
    """Unpaid orders hold their stock for the TTL of their channel: a store order (the customer at the
    counter, paying at once) a shorter one. The sweeper releases them after it."""
    ttl = placement.reservation_ttl_s if draft.body.channel == "online" else placement.store_reservation_ttl_s
    return now + timedelta(seconds=ttl)


async def place_order(conn: Connection, body: OrderIn, principal: Principal, placement: Placement) -> OrderOut:
    """One order, in the caller's transaction: validate, source, and reserve every line or none (409
    naming the short SKUs). If a level changed between the read and the lock, source again."""
    draft = draft_order(body, principal, await placement.directory.sites(conn, named_locations(body, principal)))
    until = reserved_until(draft, placement, datetime.now().astimezone())
    ful = body.fulfillment
    short: list[dict[str, Any]] = []
    for _ in range(PLACEMENT_ATTEMPTS):
        snapshot = await repo.read_stock(conn, draft.skus, draft.eligible)
        priced = price(draft, placement, snapshot)
        allocations = allocate(draft, placement.policy, snapshot)
        try:
            row = await repo.place_order(
                conn, order_id=draft.order_id, channel=body.channel, external_id=body.external_id,
                selling_location_id=draft.selling, currency=body.currency, fulfillment_type=ful.type,
                pickup_location_id=ful.location_id if ful.type == "pickup" else None, ship_to=draft.ship_to,
                totals=priced.totals, reserved_until=until, actor=draft.actor, unpaid_cap=placement.unpaid_cap(draft),
                lines=priced.rows(), allocations=[(a.line_no, a.location_id, a.qty) for a in allocations],
                event=placed_event(draft, priced, allocations),
            )
        except asyncpg.UniqueViolationError:
            raise external_id_taken(body) from None
        if row["held"] is not None:
            raise over_unpaid_cap(draft.units, placement.unpaid_cap(draft), row["held"])
        if row["short"] is None:
            return placed_out(draft, priced, allocations, until, row["placed_at"])
        short = row["short"]
    raise insufficient(short)


def external_id_taken(body: OrderIn) -> Conflict:
    return Conflict(f"an {body.channel} order with external_id '{body.external_id}' exists already",
                    field="external_id")


def over_unpaid_cap(requested: int, cap: int | None, held: int) -> domain.UnpaidUnitsLimit:
    return domain.UnpaidUnitsLimit(f"this key holds {held} unit(s) in unpaid orders; {requested} more would pass its "
                            f"limit of {cap}: take payment for those orders first (nothing was reserved)",
                            held=held, limit=cap, requested=requested)


def insufficient(short: list[dict[str, Any]]) -> InsufficientStock:
    skus = sorted({str(s["sku"]) for s in short})
    return InsufficientStock(f"not enough stock of {', '.join(skus)}; nothing was reserved", short=short,
                             skus=skus)


def placed_event(draft: Draft, priced: Priced, allocations: list[Allocation]) -> dict[str, Any]:
    body = draft.body
    return {
        "order_id": str(draft.order_id), "event": "placed", "status": "placed", "channel": body.channel,
        "external_id": body.external_id, "selling_location_id": draft.selling, "currency": body.currency,
        "total": str(priced.totals.total), "fulfillment": body.fulfillment.type,
        "lines": [{"sku": ln.sku, "qty": ln.qty, "unit_price": str(ln.unit_price), "price_source": ln.source}
                  for ln in priced.lines],
        "allocations": [{"sku": a.sku, "location_id": a.location_id, "qty": a.qty} for a in allocations],
    }


def placed_out(draft: Draft, priced: Priced, allocations: list[Allocation], until: datetime | None,
               placed_at: datetime) -> OrderOut:
    body, totals = draft.body, priced.totals
    ful = body.fulfillment
    return OrderOut(
        id=str(draft.order_id), status="placed", channel=body.channel, external_id=body.external_id,
        selling_location_id=draft.selling, currency=body.currency,
        fulfillment=FulfillmentOut(type=ful.type, location_id=ful.location_id,
                                   ship_to=ful.ship_to.model_dump() if ful.ship_to else None),
        lines=[LineOut(sku=ln.sku, qty=ln.qty, unit_price=ln.unit_price, amount=ln.amount, open=ln.qty,
                       catalogue_price=ln.catalogue_price, price_source=ln.source,
                       price_override=PriceOverrideOut(reason=ln.reason, by=draft.actor) if ln.reason else None)
               for ln in priced.lines],
        charges=[ChargeOut(**c) for c in totals.charges.as_list()],
        lines_total=totals.lines_total, total=totals.total,
        allocations=[AllocationOut(sku=a.sku, location_id=a.location_id, qty=a.qty, open=a.qty) for a in allocations],
        reserved_until=until, created_at=placed_at,
        history=[HistoryOut(event="placed", status="placed", at=placed_at, actor=draft.actor)],
    )
