"""Reconciliation rules: pure functions over sales, settlements and close-outs, no I/O.

The unit of matching is an order. A run covers one business day (optionally one channel or one
location); every order with a sale in that scope becomes one item:

- paid at the till (its sales include a till sale): the till's tenders are its payment, so the item is
  matched; the tenders themselves are checked per store and tender against the close-out.
- otherwise it is matched against the provider's settlements of that order, to the cent (within the
  amount tolerance): when it sells in scope, every positive sale of the order (any day, any location:
  payment is per order) against every capture; when it has a return in scope, every return against
  every refund. Both sides net: expected = sold - returned, paid = captured - refunded. Several
  captures (voucher + card, instalments) are normal; only their sum counts.
- classes: matched (|paid - expected| <= tolerance); missing_payment (nothing settled for it);
  duplicate (over- or under-paid by exactly k copies of a capture or refund that appears more than
  k times); amount_mismatch (anything else, including a settlement in another currency).

Settlements that no sale accounts for (a capture for an order with no positive sale, a refund for an
order with no return) are missing_sale items of the day they settled on (UTC), one per order reference.

Voided settlements take no part: the rules here only ever see live ones (repository.POSITIONS and
repository.stray_settlements read `voided_at IS NULL`).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal

from shared.errors import Conflict

MATCHED, AMOUNT_MISMATCH, MISSING_PAYMENT, MISSING_SALE, DUPLICATE = (
    "matched", "amount_mismatch", "missing_payment", "missing_sale", "duplicate")
CLASSES = (MATCHED, AMOUNT_MISMATCH, MISSING_PAYMENT, MISSING_SALE, DUPLICATE)
ZERO = Decimal("0.00")
CENT = Decimal("0.01")


def money(value: Decimal) -> Decimal:
    return value.quantize(CENT)


@dataclass(frozen=True)
class Tolerances:
    amount: Decimal = ZERO  # an order's payment may differ from its sales by this much and still match
    cash: Decimal = ZERO  # a store's declared tender total may differ from the till's by this much


@dataclass(frozen=True)
class Scope:
    business_day: date
    channel: str | None = None
    location_id: str | None = None

    def covers(self, sale: Sale) -> bool:
        return (sale.business_day == self.business_day
                and self.channel in (None, sale.channel)
                and self.location_id in (None, sale.location_id))

    def covers_settlement_day(self, settled_at: datetime, channel: str | None) -> bool:
        """Settlements no sale accounts for have no location; they belong to the day they settled
        (UTC) in runs not limited to a location, and to the channel of their order (online if unknown)."""
        return (self.location_id is None and settled_at.astimezone(UTC).date() == self.business_day
                and self.channel in (None, channel or "online"))

    @property
    def checks_tills(self) -> bool:
        return self.channel in (None, "store")


@dataclass(frozen=True)
class Tender:
    kind: str
    amount: Decimal


@dataclass(frozen=True)
class Sale:
    """A row of orders.sales; `refund_tenders` are the original till tenders of a till order's return."""

    id: int
    order_id: str
    kind: str  # fulfillment, till, return
    channel: str
    location_id: str
    business_day: date
    currency: str
    total: Decimal
    tenders: tuple[Tender, ...] = ()
    refund_tenders: tuple[Tender, ...] = ()


@dataclass(frozen=True)
class Settlement:
    id: int
    order_ref: str
    order_id: str | None
    type: str  # capture, refund
    amount: Decimal
    currency: str
    settled_at: datetime
    fee: Decimal = ZERO


@dataclass(frozen=True)
class Closeout:
    location_id: str
    currency: str
    tenders: tuple[Tender, ...]


# Positions and items are made a million at a time in a big run: plain slotted dataclasses build
# several times faster than frozen ones. Nothing mutates them after construction.
@dataclass(slots=True)
class OrderPosition:
    """One order as a run sees it (built from rows in Python or aggregated in SQL, same meaning)."""

    order_id: str
    channel: str
    location_id: str  # where its first sale in scope counts
    currency: str
    paid_at_till: bool
    sales_total: Decimal  # its sales in scope (net of returns in scope)
    sells: bool  # a positive sale in scope
    returns: bool  # a return in scope
    sold: Decimal  # all its positive sales, any day
    returned: Decimal  # all its returns as a positive amount, any day
    captures: Sequence[Decimal] = ()
    refunds: Sequence[Decimal] = ()
    currencies: frozenset[str] = frozenset()  # of its settlements
    sale_ids: Sequence[int] = ()
    capture_ids: Sequence[int] = ()
    refund_ids: Sequence[int] = ()


@dataclass(slots=True)
class Item:
    kind: str  # order, settlement, tender
    cls: str
    currency: str
    expected: Decimal
    paid: Decimal
    sales_total: Decimal = ZERO
    order_id: str | None = None
    order_ref: str | None = None
    channel: str | None = None
    location_id: str | None = None
    tender: str | None = None
    sale_ids: Sequence[int] = ()
    settlement_ids: Sequence[int] = ()
    note: str | None = None

    @property
    def difference(self) -> Decimal:
        return self.paid - self.expected


class RunSuperseded(Conflict):
    code, title = "run-superseded", "The run was superseded by a newer run of the same scope"


class RunCommitted(Conflict):
    code, title = "run-committed", "The run is committed"


class UnresolvedItems(Conflict):
    code, title = "unresolved-items", "The run has unresolved items"


class SettlementVoided(Conflict):
    code, title = "settlement-voided", "The settlement is voided already"


class SettlementCommitted(Conflict):
    """A committed run's sales are on the ledger, which is never rewritten: voiding a settlement it
    counted would make finance's books disagree with the ledger's history."""

    code, title = "settlement-committed", "The settlement is on the ledger through a committed run"


class RunStale(Conflict):
    code, title = "run-stale", "The run counted a settlement that has been voided since"


# --- one order -----------------------------------------------------------------------------------


def _repeated_by(diff: Decimal, amounts: Sequence[Decimal], tolerance: Decimal) -> Decimal | None:
    """The amount of which `diff` is k extra copies, if some amount appears more than k times."""
    for amount, count in Counter(amounts).items():
        if amount <= 0 or count < 2:
            continue
        copies = (diff / amount).to_integral_value()
        if 1 <= copies <= count - 1 and abs(diff - copies * amount) <= tolerance:
            return amount
    return None


def classify(position: OrderPosition, tolerances: Tolerances) -> Item:
    """The item of one order: which class, what was expected and what was paid."""
    p = position
    if p.paid_at_till:
        return Item("order", MATCHED, p.currency, p.sales_total, p.sales_total, p.sales_total, p.order_id, None,
                    p.channel, p.location_id, None, p.sale_ids, (), "paid at the till")
    captures = p.captures if p.sells else ()
    refunds = p.refunds if p.returns else ()
    ids = tuple(p.capture_ids if p.sells else ()) + tuple(p.refund_ids if p.returns else ())
    expected = (p.sold if p.sells else ZERO) - (p.returned if p.returns else ZERO)
    paid = sum(captures, ZERO) - sum(refunds, ZERO)
    diff = paid - expected
    cls, note = _verdict(p, diff, captures, refunds, bool(ids), tolerances)
    return Item("order", cls, p.currency, expected, paid, p.sales_total, p.order_id, None, p.channel, p.location_id,
                None, p.sale_ids, ids, note)


def _verdict(p: OrderPosition, diff: Decimal, captures: Sequence[Decimal], refunds: Sequence[Decimal],
             settled: bool, tolerances: Tolerances) -> tuple[str, str | None]:
    foreign = sorted(p.currencies - {p.currency}) if settled else []
    if foreign:
        return AMOUNT_MISMATCH, f"settled in {', '.join(foreign)}, sold in {p.currency}"
    if abs(diff) <= tolerances.amount:
        return MATCHED, None if diff == 0 else f"within tolerance ({diff:+})"
    if not settled:
        return MISSING_PAYMENT, "no settlement" if p.sells else "no refund settled"
    repeated = _repeated_by(diff, captures, tolerances.amount) if diff > 0 else \
        _repeated_by(-diff, refunds, tolerances.amount)
    if repeated is not None:
        return DUPLICATE, f"{'capture' if diff > 0 else 'refund'} of {repeated} repeated"
    if p.returns and not refunds and p.sells and diff == p.returned:
        return AMOUNT_MISMATCH, "return not refunded"
    return AMOUNT_MISMATCH, f"{'over' if diff > 0 else 'under'}paid by {abs(diff)}"


def _with(item: Item, cls: str, note: str) -> Item:
    return replace(item, cls=cls, note=note)


def stray_item(order_ref: str, settlements: Sequence[Settlement], channel: str | None) -> Item:
    """Settlements of one order reference that no sale accounts for."""
    paid = sum((s.amount if s.type == "capture" else -s.amount for s in settlements), ZERO)
    currencies = sorted({s.currency for s in settlements})
    kinds = sorted({s.type for s in settlements})
    return Item(kind="settlement", cls=MISSING_SALE, currency=currencies[0], expected=ZERO, paid=paid,
                order_id=settlements[0].order_id, order_ref=order_ref, channel=channel or "online",
                settlement_ids=tuple(sorted(s.id for s in settlements)),
                note=f"{' and '.join(kinds)} with no {'sale' if kinds == ['capture'] else 'sale or return'}")


def tender_item(location_id: str, tender: str, currency: str, expected: Decimal, declared: Decimal | None,
                tolerances: Tolerances) -> Item:
    """A store's till total for one tender against its close-out (cash over/short)."""
    common = {"kind": "tender", "currency": currency, "channel": "store", "location_id": location_id,
              "tender": tender, "expected": expected}
    if declared is None:
        return Item(cls=MISSING_PAYMENT if expected else MATCHED, paid=ZERO,
                    note="no close-out declared" if expected else None, **common)
    diff = declared - expected
    if abs(diff) <= tolerances.cash:
        return Item(cls=MATCHED, paid=declared, note=f"within tolerance ({diff:+})" if diff else None, **common)
    if expected == ZERO:
        return Item(cls=MISSING_SALE, paid=declared, note="declared, but the tills took nothing in it", **common)
    return Item(cls=AMOUNT_MISMATCH, paid=declared, note=f"{'over' if diff > 0 else 'short'} by {abs(diff)}",
                **common)


# --- a whole day, from rows ---------------------------------------------------------------------


def positions(scope: Scope, sales: Iterable[Sale], settlements: Iterable[Settlement]) -> list[OrderPosition]:
    """Order positions of every order with a sale in scope (what the SQL aggregation computes)."""
    by_order: dict[str, list[Sale]] = defaultdict(list)
    for sale in sales:
        by_order[sale.order_id].append(sale)
    paid: dict[str, list[Settlement]] = defaultdict(list)
    for s in settlements:
        if s.order_id is not None:
            paid[s.order_id].append(s)
    out = []
    for order_id in sorted(by_order):
        rows = sorted(by_order[order_id], key=lambda r: r.id)
        in_scope = [r for r in rows if scope.covers(r)]
        if not in_scope:
            continue
        mine = sorted(paid.get(order_id, []), key=lambda s: s.id)
        out.append(OrderPosition(
            order_id=order_id, channel=rows[0].channel, location_id=in_scope[0].location_id,
            currency=rows[0].currency, paid_at_till=any(r.kind == "till" for r in rows),
            sales_total=sum((r.total for r in in_scope), ZERO),
            sells=any(r.kind != "return" for r in in_scope), returns=any(r.kind == "return" for r in in_scope),
            sold=sum((r.total for r in rows if r.kind != "return"), ZERO),
            returned=-sum((r.total for r in rows if r.kind == "return"), ZERO),
            captures=tuple(s.amount for s in mine if s.type == "capture"),
            refunds=tuple(s.amount for s in mine if s.type == "refund"),
            currencies=frozenset(s.currency for s in mine), sale_ids=tuple(r.id for r in in_scope),
            capture_ids=tuple(s.id for s in mine if s.type == "capture"),
            refund_ids=tuple(s.id for s in mine if s.type == "refund"),
        ))
    return out


def is_stray(settlement: Settlement, sale_kinds: set[str]) -> bool:
    """No sale accounts for it: a capture and no positive sale of its order, a refund and no return."""
    if settlement.type == "capture":
        return not sale_kinds - {"return"}
    return "return" not in sale_kinds


def strays(scope: Scope, sales: Iterable[Sale], settlements: Iterable[Settlement],
           channels: dict[str, str] | None = None) -> list[Item]:
    kinds: dict[str, set[str]] = defaultdict(set)
    for sale in sales:
        kinds[sale.order_id].add(sale.kind)
    channels = channels or {}
    grouped: dict[str, list[Settlement]] = defaultdict(list)
    for s in settlements:
        channel = channels.get(s.order_id) if s.order_id else None
        if scope.covers_settlement_day(s.settled_at, channel) and is_stray(s, kinds.get(s.order_id or "", set())):
            grouped[s.order_id or s.order_ref].append(s)
    return [stray_item(rows[0].order_ref, sorted(rows, key=lambda s: s.id), channels.get(rows[0].order_id or ""))
            for _, rows in sorted(grouped.items())]


@dataclass
class TillTotals:
    """Per (location, tender, currency): what the tills took, net of refunds given at the till."""

    expected: dict[tuple[str, str, str], Decimal] = field(default_factory=lambda: defaultdict(lambda: ZERO))

    def add_sale(self, sale: Sale) -> None:
        for tender in sale.tenders:
            self.expected[(sale.location_id, tender.kind, sale.currency)] += tender.amount

    def add_return(self, location_id: str, currency: str, total: Decimal, original: Sequence[Tender]) -> None:
        """A till order's return is refunded in the original sale's first tender (cash if unknown)."""
        kind = original[0].kind if original else "cash"
        self.expected[(location_id, kind, currency)] += total


def tender_items(totals: TillTotals, closeouts: Iterable[Closeout], tolerances: Tolerances) -> list[Item]:
    declared: dict[tuple[str, str, str], Decimal] = defaultdict(lambda: ZERO)
    declaring: set[str] = set()
    for closeout in closeouts:
        declaring.add(closeout.location_id)
        for tender in closeout.tenders:
            declared[(closeout.location_id, tender.kind, closeout.currency)] += tender.amount
    keys = sorted(set(totals.expected) | set(declared))
    return [tender_item(loc, kind, cur, totals.expected.get((loc, kind, cur), ZERO),
                        declared[(loc, kind, cur)] if loc in declaring else None, tolerances)
            for loc, kind, cur in keys]


def till_totals(scope: Scope, sales: Iterable[Sale]) -> TillTotals:
    totals = TillTotals()
    for sale in sales:
        if not scope.covers(sale) or not scope.checks_tills:
            continue
        if sale.kind == "till":
            totals.add_sale(sale)
        elif sale.kind == "return" and sale.refund_tenders:
            totals.add_return(sale.location_id, sale.currency, sale.total, sale.refund_tenders)
    return totals


def reconcile(scope: Scope, sales: Sequence[Sale], settlements: Sequence[Settlement],
              closeouts: Sequence[Closeout] = (), tolerances: Tolerances = Tolerances(),
              channels: dict[str, str] | None = None) -> list[Item]:
    """Every item of a run, in item order: orders, then unexplained settlements, then tills.

    `sales` holds every sale of the orders concerned (any day), `settlements` every settlement of those
    orders and those settled on the day, `closeouts` the latest declaration per store of the day.
    """
    items = [classify(p, tolerances) for p in positions(scope, sales, settlements)]
    items += strays(scope, sales, settlements, channels)
    if scope.checks_tills:
        wanted = [c for c in closeouts if scope.location_id in (None, c.location_id)]
        items += tender_items(till_totals(scope, sales), wanted, tolerances)
    return items


# --- a run's totals and its entries ---------------------------------------------------------------


@dataclass
class RunTotals:
    counts: Counter[str] = field(default_factory=Counter)
    by_currency: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def add(self, item: Item) -> None:
        self.counts[item.cls] += 1
        sums = self.by_currency.get(item.currency)
        if sums is None:
            sums = self.by_currency[item.currency] = {"sales": ZERO, "expected": ZERO, "paid": ZERO}
        sums["sales"] += item.sales_total
        if item.kind != "tender":  # a till's tenders are already in its orders' totals
            sums["expected"] += item.expected
            sums["paid"] += item.paid

    def count_dict(self) -> dict[str, int]:
        return {cls: self.counts.get(cls, 0) for cls in CLASSES}

    def total_list(self) -> list[dict[str, str]]:
        return [{"currency": cur, "sales": str(s["sales"]), "expected": str(s["expected"]), "paid": str(s["paid"]),
                 "difference": str(s["paid"] - s["expected"])} for cur, s in sorted(self.by_currency.items())]


def item_entry(run_id: int, business_day: date, item_no: int, item: Item) -> dict[str, object]:
    """The canonical form of an item: what the run's Merkle root covers."""
    return {
        "run_id": run_id, "business_day": business_day.isoformat(), "item_no": item_no, "kind": item.kind,
        "class": item.cls, "order_id": item.order_id, "order_ref": item.order_ref, "channel": item.channel,
        "location_id": item.location_id, "tender": item.tender, "currency": item.currency,
        "sales_total": f"{item.sales_total:.2f}", "expected": f"{item.expected:.2f}", "paid": f"{item.paid:.2f}",
        "sale_ids": list(item.sale_ids), "settlement_ids": list(item.settlement_ids),
    }


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 root over leaf hashes, level by level (an odd last node moves up unchanged, which is the
    same tree as splitting at the largest power of two); ledger.merkle.root gives the same, slower."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def committable(item_class: str, resolved: bool) -> bool:
    return item_class == MATCHED or resolved


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()
