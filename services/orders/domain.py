"""Order rules, free of I/O: money, the status machine, what a fulfilment, cancellation or return takes.

Status machine (the `status` column; `event`s in the history say what happened):

    placed ──pay──> paid
    placed | paid ──fulfil (all open units)──> fulfilled ──complete──> completed
    placed | paid ──cancel (all open units, nothing fulfilled)──> cancelled
    placed ──reservation expired (sweeper)──> cancelled (or fulfilled if some units already were)

Partial fulfilment and partial cancellation act per line and keep the status (events
`partially_fulfilled`, `partially_cancelled`) until no unit is open; then the order is `fulfilled` if
any unit was fulfilled, else `cancelled`. Payment may also be recorded on a fulfilled, unpaid order
(pay at pick-up): its status stays `fulfilled`. Returns take back fulfilled units of a placed, paid or
fulfilled order. `completed` (fulfilled and paid, closed) and `cancelled` are final. Anything else is
a 409 illegal-transition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from shared.errors import Conflict, Forbidden, IllegalTransition, ValidationFailed, field_error


class PriceOverrideForbidden(Forbidden):
    """A price other than the catalogue's that this key may not set (a store past its discount cap)."""

    code, title = "price-override-forbidden", "Price override not allowed"


class OrderNotPaid(Conflict):
    code, title = "order-not-paid", "The order is not paid"


class UnpaidUnitsLimit(Conflict):
    code, title = "unpaid-units-limit", "Too many units held unpaid"


CENT = Decimal("0.01")
ACTIVE = ("placed", "paid")
RETURNABLE = ("placed", "paid", "fulfilled")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Charges:
    shipping: Decimal = Decimal("0.00")
    tax: Decimal = Decimal("0.00")
    discount: Decimal = Decimal("0.00")

    def as_list(self) -> list[dict[str, Decimal]]:
        return [{"kind": k, "amount": v} for k, v in
                (("shipping", self.shipping), ("tax", self.tax), ("discount", self.discount)) if v]


@dataclass(frozen=True)
class Totals:
    lines_total: Decimal
    charges: Charges
    total: Decimal


def charges_of(items: Sequence[tuple[str, Decimal]]) -> Charges:
    """Order-level charges by kind; several charges of one kind add up."""
    sums = {"shipping": Decimal(0), "tax": Decimal(0), "discount": Decimal(0)}
    for kind, amount in items:
        sums[kind] += amount
    return Charges(**{k: money(v) for k, v in sums.items()})


def totals(lines: Sequence[tuple[int, Decimal]], charges: Charges) -> Totals:
    """total = sum(qty x unit_price) + shipping + tax - discount, exact to the cent; never negative."""
    lines_total = money(sum((Decimal(qty) * price for qty, price in lines), Decimal(0)))
    total = money(lines_total + charges.shipping + charges.tax - charges.discount)
    if total < 0:
        raise field_error("charges", f"the discount exceeds lines plus charges (total would be {total})")
    if total >= Decimal("1e12"):
        raise field_error("lines", "the order total is too large")
    return Totals(lines_total, charges, total)


def check_distinct_skus(skus: Sequence[str]) -> None:
    seen: set[str] = set()
    for i, sku in enumerate(skus):
        if sku in seen:
            raise field_error(f"lines.{i}.sku", f"sku '{sku}' appears twice; put the quantity on one line")
        seen.add(sku)


def check_catalog(skus: Sequence[str], currency: str, catalog: dict[str, str]) -> None:
    """Every SKU exists and is priced in the order's currency (one currency per order, the SKU's)."""
    errors = []
    for i, sku in enumerate(skus):
        if sku not in catalog:
            errors.append({"field": f"lines.{i}.sku", "problem": f"unknown sku '{sku}'"})
        elif catalog[sku] != currency:
            errors.append({"field": "currency",
                           "problem": f"sku '{sku}' is sold in {catalog[sku]}, the order is in {currency}"})
    if errors:
        raise ValidationFailed(errors)


# --- prices ------------------------------------------------------------------------------------------
#
# Store orders and till sales are priced from the catalogue: a line without unit_price takes it, a
# line with the catalogue price is as if it had none. Any other price (lower or higher) is an override:
# it needs `price_override: {reason}` and a role that may set it: admin and ops any price, a store
# key only a markdown of at most `max_discount_pct` (an upward price is a catalogue change, not the
# till's). The order-level discount a store key gives counts toward the same cap. Online orders carry
# the channel's price (the shop runs its promotions): recorded as price_source `channel` beside the
# catalogue price.

OVERRIDERS = ("admin", "ops")


@dataclass(frozen=True)
class PriceAsked:
    sku: str
    qty: int
    unit_price: Decimal | None
    reason: str | None


@dataclass(frozen=True)
class PricedLine:
    sku: str
    qty: int
    unit_price: Decimal
    catalogue_price: Decimal
    source: str  # catalogue | override | channel
    reason: str | None

    @property
    def amount(self) -> Decimal:
        return money(self.unit_price * self.qty)


def price_lines(channel: str, role: str, asked: Sequence[PriceAsked], catalogue: dict[str, Decimal],
                max_discount_pct: Decimal) -> list[PricedLine]:
    """Each line's price and where it came from (see above); 403 naming the first line this key may
    not price so, else 422 naming every override without a reason."""
    priced, missing = [], []
    for i, ask in enumerate(asked):
        listed = catalogue[ask.sku]
        if ask.unit_price is None and ask.reason is not None:
            missing.append({"field": f"lines.{i}.price_override",
                            "problem": "an override names the unit_price it sets"})
        if ask.unit_price is None or ask.unit_price == listed:
            priced.append(PricedLine(ask.sku, ask.qty, listed, listed, "catalogue", None))
            continue
        if channel == "online":
            priced.append(PricedLine(ask.sku, ask.qty, ask.unit_price, listed, "channel", ask.reason))
            continue
        _check_override_allowed(f"lines.{i}.unit_price", role, ask.sku, ask.unit_price, listed, max_discount_pct)
        if ask.reason is None:
            missing.append({"field": f"lines.{i}.price_override",
                            "problem": f"'{ask.sku}' is {listed} in the catalogue: a different price needs "
                                       "price_override: {reason}"})
        priced.append(PricedLine(ask.sku, ask.qty, ask.unit_price, listed, "override", ask.reason))
    if missing:
        raise ValidationFailed(missing)
    return priced


def _check_override_allowed(field: str, role: str, sku: str, price: Decimal, listed: Decimal,
                            max_discount_pct: Decimal) -> None:
    if role in OVERRIDERS:
        return
    if role != "store" or price > listed:
        raise PriceOverrideForbidden(f"'{sku}' is {listed} in the catalogue; role '{role}' may not sell it at "
                                     f"{price}", field=field)
    if listed - price > listed * max_discount_pct / 100:
        raise PriceOverrideForbidden(f"'{sku}' at {price} is more than {max_discount_pct}% off its catalogue "
                                     f"price {listed}; ask ops or admin", field=field, max_discount_pct=str(
                                         max_discount_pct))


def check_store_discount(role: str, lines: Sequence[PricedLine], charges: Charges, max_discount_pct: Decimal) -> None:
    """A store key's markdowns and order-level discount together stay within its cap (403 `charges`)."""
    if role != "store" or not charges.discount:
        return
    listed = sum((money(ln.catalogue_price * ln.qty) for ln in lines), Decimal(0))
    sold = sum((ln.amount for ln in lines), Decimal(0)) - charges.discount
    if listed - sold > listed * max_discount_pct / 100:
        raise PriceOverrideForbidden(f"the goods list at {listed}; with the discount they would sell for {sold}, "
                                     f"more than {max_discount_pct}% off; ask ops or admin", field="charges",
                                     max_discount_pct=str(max_discount_pct))


def check_tenders(total: Decimal, tenders: Sequence[Decimal]) -> None:
    paid = money(sum(tenders, Decimal(0)))
    if paid != total:
        raise field_error("tenders", f"tenders sum to {paid}, the sale totals {total}")


# --- an order's state, as the lifecycle rules see it ------------------------------------------------


@dataclass
class Allocation:
    line_no: int
    sku: str
    location_id: str
    qty: int
    fulfilled: int = 0
    cancelled: int = 0

    @property
    def open(self) -> int:
        return self.qty - self.fulfilled - self.cancelled


@dataclass
class Line:
    line_no: int
    sku: str
    qty: int
    unit_price: Decimal
    returned: int = 0
    catalogue_price: Decimal | None = None  # None: placed before prices were checked
    price_source: str | None = None
    price_reason: str | None = None


@dataclass
class Order:
    id: str
    status: str
    channel: str
    currency: str
    selling_location_id: str | None
    pickup_location_id: str | None
    paid: bool
    charges_recognized: bool
    charges: Charges
    total: Decimal
    lines: list[Line]
    allocations: list[Allocation] = field(default_factory=list)
    placed_by: str = ""

    def line(self, line_no: int) -> Line:
        return next(line for line in self.lines if line.line_no == line_no)

    def fulfilled_of(self, line_no: int) -> int:
        return sum(a.fulfilled for a in self.allocations if a.line_no == line_no)

    @property
    def open_units(self) -> int:
        return sum(a.open for a in self.allocations)

    def locations(self) -> set[str]:
        found = {a.location_id for a in self.allocations}
        return found | {x for x in (self.selling_location_id, self.pickup_location_id) if x}


@dataclass(frozen=True)
class Take:
    """Units of one allocation that a fulfilment or cancellation acts on."""

    line_no: int
    sku: str
    location_id: str
    qty: int


@dataclass(frozen=True)
class Request:
    sku: str
    qty: int
    location_id: str | None = None


def illegal(order: Order, action: str) -> IllegalTransition:
    return IllegalTransition(f"cannot {action} order {order.id}: it is {order.status}", status_now=order.status)


# A pick-up order's progress in the store before it is handed over. Not statuses (an order is still
# placed or paid while it is prepared): events in its history, the latest of which is its stage.
PICKUP_STAGES = ("preparing", "ready")
PICKUP_STAGE_EVENTS = {stage: f"pickup_{stage}" for stage in PICKUP_STAGES}


def pickup_stage(events: Sequence[str]) -> str | None:
    """The stage the latest pick-up stage event set, None before any."""
    for event in reversed(events):
        for stage, name in PICKUP_STAGE_EVENTS.items():
            if event == name:
                return stage
    return None


def check_pickup_stage(order: Order, stage: str) -> None:
    if order.pickup_location_id is None:
        raise IllegalTransition(f"order {order.id} is not picked up in a store", status_now=order.status)
    if order.status not in ("placed", "paid"):
        raise illegal(order, f"mark as {stage}")


def check_can(order: Order, action: str) -> None:
    allowed = {"pay": ("placed", "fulfilled"), "fulfill": ACTIVE, "cancel": ACTIVE,
               "complete": ("fulfilled",), "return": RETURNABLE}[action]
    if order.status not in allowed:
        raise illegal(order, action)
    if action == "pay" and order.paid:
        raise IllegalTransition(f"order {order.id} is already paid", status_now=order.status)
    if action == "complete" and not order.paid:
        raise IllegalTransition(f"order {order.id} is not paid; record the payment first", status_now=order.status)


# --- what a key may act on ---------------------------------------------------------------------------
# A store key acts for its own location only: it records payment for orders sold or picked up there
# (where the customer pays), cancels and fulfils only units allocated there (a store never releases or
# ships another location's stock, even of an order it sold), and completes orders that involve it.
# A shop key pays and cancels online orders only. Other roles are settled by the route's role list.


def store_location(role: str, location_id: str | None) -> str | None:
    """The location a key is confined to: a store key's own, else None (no confinement)."""
    return location_id if role == "store" else None


def check_may_act(order: Order, role: str, location_id: str | None, action: str) -> None:
    if role == "shop" and order.channel != "online":
        raise Forbidden(f"a shop key may {action} online orders only")
    if role != "store":
        return
    if action == "stage":
        if location_id != order.pickup_location_id:
            raise Forbidden(f"only the pick-up store marks this order's progress, not {location_id}")
    elif action == "pay":
        if location_id not in (order.selling_location_id, order.pickup_location_id):
            raise Forbidden(f"this store key records payment only for orders sold or picked up at {location_id}")
    elif action in ("cancel", "fulfill"):
        if location_id not in {a.location_id for a in order.allocations}:
            raise Forbidden(f"nothing of this order is allocated at {location_id}")
    elif location_id not in order.locations():
        raise Forbidden(f"this store key may not {action} an order that does not involve {location_id}")


def take_open(order: Order, requests: Sequence[Request] | None, action: str,
              only_location: str | None = None) -> list[Take]:
    """The open units a fulfilment or cancellation acts on: all of them (at `only_location`, for a
    store key) when `requests` is None, else exactly the requested quantities."""
    check_can(order, action)
    pool = [a for a in order.allocations if a.open > 0 and (only_location is None or a.location_id == only_location)]
    if requests is None:
        takes = [Take(a.line_no, a.sku, a.location_id, a.open) for a in pool]
        if not takes:
            raise IllegalTransition(f"order {order.id} has no open units to {action}"
                                    + (f" at {only_location}" if only_location else ""), status_now=order.status)
        return takes
    skus = {line.sku for line in order.lines}
    takes, used = [], {}
    for i, req in enumerate(requests):
        if req.sku not in skus:
            raise field_error(f"lines.{i}.sku", f"sku '{req.sku}' is not on order {order.id}")
        if only_location is not None and req.location_id not in (None, only_location):
            raise Forbidden(f"this store key acts only on units at {only_location}")
        wanted = req.qty
        for a in pool:
            if a.sku != req.sku or (req.location_id is not None and a.location_id != req.location_id):
                continue
            room = a.open - used.get(id(a), 0)
            step = min(room, wanted)
            if step > 0:
                takes.append(Take(a.line_no, a.sku, a.location_id, step))
                used[id(a)] = used.get(id(a), 0) + step
                wanted -= step
        if wanted > 0:
            where = f" at {req.location_id or only_location}" if (req.location_id or only_location) else ""
            raise IllegalTransition(f"order {order.id} has only {req.qty - wanted} open unit(s) of '{req.sku}'"
                                    f"{where} to {action}, not {req.qty}", status_now=order.status)
    return takes


def apply_takes(order: Order, takes: Sequence[Take], kind: str) -> None:
    for take in takes:
        alloc = next(a for a in order.allocations if a.line_no == take.line_no and a.location_id == take.location_id)
        if kind == "fulfill":
            alloc.fulfilled += take.qty
        else:
            alloc.cancelled += take.qty


def status_after_takes(order: Order) -> str:
    """With no unit open, an order is fulfilled if any unit was, else cancelled; otherwise unchanged."""
    if order.open_units > 0:
        return order.status
    return "fulfilled" if any(a.fulfilled for a in order.allocations) else "cancelled"


def event_after_takes(kind: str, new_status: str) -> str:
    """`fulfilled` / `cancelled` when the order reached that status, else the partial event."""
    if kind == "fulfill":
        return "fulfilled" if new_status == "fulfilled" else "partially_fulfilled"
    return "cancelled" if new_status == "cancelled" else "partially_cancelled"


@dataclass(frozen=True)
class SaleDraft:
    """A sale to record: lines [{sku, qty, unit_price, amount, location_id}] and signed amounts."""

    kind: str
    location_id: str
    lines: list[dict[str, object]]
    goods: Decimal
    charges: Charges

    @property
    def total(self) -> Decimal:
        return money(self.goods + self.charges.shipping + self.charges.tax - self.charges.discount)


def price_record(line: Line, placed_by: str) -> dict[str, object]:
    """What a sales record line says about its price: the catalogue's, where the sold price came
    from, and for an override its reason and who set it."""
    out: dict[str, object] = {"catalogue_price": line.catalogue_price, "price_source": line.price_source}
    if line.price_reason is not None:
        out["price_override"] = {"reason": line.price_reason, "by": placed_by}
    return out


def fulfilment_sales(order: Order, takes: Sequence[Take]) -> list[SaleDraft]:
    """One sale per credited location: the selling store for channel store, else where the stock left.
    Order-level charges go, whole, onto the first sale of the order's first fulfilment."""
    by_location: dict[str, list[dict[str, object]]] = {}
    for take in takes:
        line = order.line(take.line_no)
        credited = order.selling_location_id if order.channel == "store" and order.selling_location_id else \
            take.location_id
        by_location.setdefault(credited, []).append({
            "sku": take.sku, "qty": take.qty, "unit_price": line.unit_price,
            "amount": money(line.unit_price * take.qty), "location_id": take.location_id,
            **price_record(line, order.placed_by),
        })
    drafts = []
    for i, (location_id, lines) in enumerate(sorted(by_location.items())):
        charges = order.charges if i == 0 and not order.charges_recognized else Charges()
        goods = money(sum((ln["amount"] for ln in lines), Decimal(0)))  # type: ignore[misc]
        drafts.append(SaleDraft("fulfillment", location_id, lines, goods, charges))
    return drafts


def return_sale(order: Order, requests: Sequence[Request], location_id: str, refunded: Decimal) -> SaleDraft:
    """What a return takes back (negative), after checking each unit was fulfilled and not returned
    yet, and that the order was paid (409 order-not-paid: an unpaid order's units bring no money back).

    Only goods are refunded (shipping and tax stay recognised), net of the order-level discount: the
    returned goods so far, at their unit prices, times (lines - discount) / lines, less what earlier
    returns of the order already refunded (`refunded`). So all returns together never give back more
    than the goods' share of the payment, and the rounding of partial returns evens out on the last.
    The discount given back shows as a negative `discount` on the return's record."""
    check_can(order, "return")
    lines = []
    returned_goods = Decimal(0)  # every unit returned so far and now, at its unit price
    for i, req in enumerate(requests):
        line = next((ln for ln in order.lines if ln.sku == req.sku), None)
        if line is None:
            raise field_error(f"lines.{i}.sku", f"sku '{req.sku}' is not on order {order.id}")
        returnable = order.fulfilled_of(line.line_no) - line.returned
        if req.qty > returnable:
            raise IllegalTransition(f"only {returnable} unit(s) of '{req.sku}' of order {order.id} can be returned,"
                                    f" not {req.qty}", status_now=order.status)
        lines.append({"sku": req.sku, "qty": -req.qty, "unit_price": line.unit_price,
                      "amount": -money(line.unit_price * req.qty), "location_id": location_id,
                      **price_record(line, order.placed_by), "line_no": line.line_no})
    if len({ln["sku"] for ln in lines}) != len(lines):
        raise field_error("lines", "each sku at most once per return")
    if not order.paid:
        raise OrderNotPaid(f"order {order.id} is not paid: there is nothing to refund for its units",
                           status_now=order.status)
    goods = money(sum((ln["amount"] for ln in lines), Decimal(0)))  # type: ignore[misc]
    returning = {int(ln["line_no"]): -int(ln["qty"]) for ln in lines}  # type: ignore[call-overload]
    for line in order.lines:
        returned_goods += line.unit_price * (line.returned + returning.get(line.line_no, 0))
    lines_total = money(sum((ln.unit_price * ln.qty for ln in order.lines), Decimal(0)))
    net_goods = max(Decimal(0), lines_total - order.charges.discount)  # what the goods cost the customer
    due = money(returned_goods * net_goods / lines_total) if lines_total else Decimal(0)
    refund = min(-goods, max(Decimal(0), min(due, net_goods) - refunded))
    # total = goods - discount, so the discount share given back is goods + refund (<= 0)
    return SaleDraft("return", location_id, lines, goods, Charges(discount=money(goods + refund)))
