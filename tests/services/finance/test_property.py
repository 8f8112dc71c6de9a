"""Generate a day, inject known faults (drop, duplicate, alter an amount, add a stray payment): the run
finds exactly the injected faults. Once on the pure rules (many days), once through the real stack."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.finance import domain
from services.finance.domain import Sale, Scope, Settlement
from tests.services.finance.conftest import SKUS, Books, payment

DAY = date(2024, 5, 1)
NOON = datetime(2024, 5, 1, 12, tzinfo=UTC)
CENT = Decimal("0.01")
FAULTS = {"drop": "missing_payment", "duplicate": "duplicate", "alter": "amount_mismatch"}


@dataclass
class Planned:
    """One order of the generated day: its sale total, the parts it is paid in, and its fault."""

    order_id: str
    total: Decimal
    parts: list[Decimal]
    fault: str | None = None
    returned: Decimal = Decimal("0.00")  # a same-day return, refunded (not a fault)
    payments: list[tuple[str, Decimal]] = field(default_factory=list)  # (type, amount) after the fault


def split(total: Decimal, pieces: int, rnd: random.Random) -> list[Decimal]:
    cents = int(total / CENT)
    pieces = min(pieces, cents)
    cuts = sorted(rnd.sample(range(1, cents), pieces - 1)) if pieces > 1 else []
    bounds = [0, *cuts, cents]
    return [Decimal(b - a) * CENT for a, b in zip(bounds, bounds[1:], strict=False)]


def inject(plan: Planned, rnd: random.Random) -> bool:
    """Apply the fault; False when the fault could be mistaken for another (the generator avoids those)."""
    parts = list(plan.parts)
    if plan.fault == "drop":
        parts = []
    elif plan.fault == "duplicate":
        parts.append(rnd.choice(parts))
    elif plan.fault == "alter":
        i = rnd.randrange(len(parts))
        delta = Decimal(rnd.choice([-1, 1]) * rnd.randint(1, 500)) * CENT
        if parts[i] + delta <= 0:
            delta = -delta
        parts[i] += delta
        # an over-payment by exactly a repeated part would read as a duplicate
        repeated = {p for p in parts if parts.count(p) > 1}
        if delta > 0 and any((delta / p) == (delta / p).to_integral_value() for p in repeated):
            return False
    plan.payments = [("capture", p) for p in parts]
    if plan.returned and plan.fault != "drop":
        plan.payments.append(("refund", plan.returned))
    return True


def plans_strategy() -> st.SearchStrategy[tuple[list[Planned], int]]:
    order = st.tuples(st.integers(1, 50_000), st.integers(1, 3), st.sampled_from([None, None, *FAULTS]),
                      st.booleans(), st.randoms(use_true_random=False))
    return st.tuples(st.lists(order, min_size=1, max_size=30), st.integers(0, 4))


def build(raw: list[Any]) -> list[Planned]:
    plans = []
    for n, (cents, pieces, fault, with_return, rnd) in enumerate(raw):
        total = Decimal(cents) * CENT
        plan = Planned(f"00000000-0000-0000-0000-{n:012d}", total, split(total, pieces, rnd), fault)
        if with_return and cents > 1:
            plan.returned = Decimal(rnd.randint(1, cents - 1)) * CENT
        assume(inject(plan, rnd))
        plans.append(plan)
    return plans


def rows_of(plans: list[Planned], strays: int) -> tuple[list[Sale], list[Settlement]]:
    sales, settlements, ids = [], [], iter(range(1, 10_000))
    for p in plans:
        sales.append(Sale(next(ids), p.order_id, "fulfillment", "online", "wh-1", DAY, "EUR", p.total))
        if p.returned:
            sales.append(Sale(next(ids), p.order_id, "return", "online", "wh-1", DAY, "EUR", -p.returned))
        settlements += [Settlement(next(ids), p.order_id, p.order_id, kind, amount, "EUR", NOON)
                        for kind, amount in p.payments]
    settlements += [Settlement(next(ids), f"stray-{i}", None, "capture", Decimal("7.77"), "EUR", NOON)
                    for i in range(strays)]
    return sales, settlements


def found_faults(items: list[domain.Item]) -> tuple[dict[str, str], set[str]]:
    orders = {i.order_id: i.cls for i in items if i.kind == "order" and i.cls != "matched"}
    strays = {i.order_ref for i in items if i.cls == "missing_sale"}
    return orders, strays  # type: ignore[return-value]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(plans_strategy())
def test_the_rules_find_exactly_the_injected_faults(day: tuple[list[Any], int]) -> None:
    raw, strays = day
    plans = build(raw)
    sales, settlements = rows_of(plans, strays)
    items = domain.reconcile(Scope(DAY), sales, settlements)
    orders, stray_refs = found_faults(items)
    assert orders == {p.order_id: FAULTS[p.fault] for p in plans if p.fault}
    assert stray_refs == {f"stray-{i}" for i in range(strays)}
    assert sum(1 for i in items if i.kind == "order") == len(plans)


# --- the same through the real stack ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [7, 2024])
async def test_a_generated_day_through_the_api_finds_exactly_the_injected_faults(books: Books, seed: int) -> None:
    rnd = random.Random(seed)
    prices = {sku: Decimal(p) for sku, p in SKUS.items()}
    plans: list[Planned] = []
    for n in range(24):
        lines = {sku: rnd.randint(1, 3) for sku in rnd.sample(sorted(SKUS), rnd.randint(1, 2))}
        order = await books.sell_online(lines)
        total = sum((prices[s] * q for s, q in lines.items()), Decimal(0))
        plan = Planned(order["id"], total, split(total, rnd.randint(1, 3), rnd), rnd.choice([None, None, *FAULTS]))
        if n % 5 == 0:
            sku = next(iter(lines))
            await books.give_back(order["id"], {sku: 1})
            plan.returned = prices[sku]
        while not inject(plan, rnd):
            plan.fault = None
        plans.append(plan)
    day = await books.day_of("wh-1")  # asked once: a run near midnight must not compare two different days
    noon = datetime.combine(day, datetime.min.time(), UTC).replace(hour=12)
    strays = [payment(f"stray-{i}", "7.77", settled_at=noon) for i in range(rnd.randint(1, 3))]
    await books.settle(*[payment(p.order_id, f"{a}", kind=k) for p in plans for k, a in p.payments], *strays)

    run = await books.run(day)
    orders = {i["order_id"]: i["class"] for i in run["items"] if i["kind"] == "order" and i["class"] != "matched"}
    assert orders == {p.order_id: FAULTS[p.fault] for p in plans if p.fault}
    assert {i["order_ref"] for i in run["items"] if i["class"] == "missing_sale"} == {s["order_id"] for s in strays}

    # the set-based path and the pure rules agree item for item on the same rows
    sales = [Sale(r["id"], str(r["order_id"]), r["kind"], r["channel"], r["location_id"], r["business_day"],
                  r["currency"], r["total"]) for r in await books.pool.fetch("SELECT * FROM orders.sales")]
    settlements = [Settlement(r["id"], r["order_ref"], str(r["order_id"]) if r["order_id"] else None, r["type"],
                              r["amount"], r["currency"], r["settled_at"])
                   for r in await books.pool.fetch("SELECT * FROM finance.settlements")]
    pure = domain.reconcile(Scope(day), sales, settlements)
    assert sorted((i.order_id or i.order_ref, i.cls, f"{i.expected:.2f}", f"{i.paid:.2f}", list(i.settlement_ids))
                  for i in pure) == \
        sorted((i["order_id"] or i["order_ref"], i["class"], i["expected"], i["paid"], i["settlement_ids"])
               for i in run["items"])
