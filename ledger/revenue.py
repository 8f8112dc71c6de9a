"""The auditor's revenue report, read from the ledger alone: reconciled sales (their `sales_total`,
as finance writes them) summed per business day, channel and location (and currency), counting only
entries the audit could verify.

`RevenueTally` is an audit visitor (ledger.port.EntryVisitor): the sums are taken in the same pass
that re-checks every entry, so a sale that fails verification is named and left out, never summed.

Comparison with finance's own revenue report is a hook: `compare(ledger_groups, finance_groups)`
takes finance's figures in the same shape ({business_day, channel, location_id, currency, amount})
and lists every difference. Finance's report (services/finance, GET /v1/reports/revenue) is wired in
by whoever owns it through `FinanceRevenueSource`; until then the report says "comparison": null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from ledger.policy import RECONCILED_SALE

GroupKey = tuple[str, str, str | None, str]  # business_day, channel, location_id, currency


class FinanceRevenueSource(Protocol):
    """Finance's revenue for the same days and grouping (the hook the finance service fills in)."""

    async def revenue_groups(self, date_from: str, date_to: str) -> list[Mapping[str, Any]]: ...


@dataclass
class RevenueTally:
    date_from: str
    date_to: str
    sales: dict[int, tuple[GroupKey, Decimal]] = field(default_factory=dict)
    unreadable: list[int] = field(default_factory=list)

    def __call__(self, seq: int, entry: dict[str, Any]) -> None:
        if entry.get("kind") != RECONCILED_SALE:
            return
        day = entry.get("business_day")
        if not isinstance(day, str) or not self.date_from <= day <= self.date_to:
            return
        try:
            key = (day, str(entry["channel"]), entry.get("location_id"), str(entry["currency"]))
            self.sales[seq] = (key, Decimal(entry["sales_total"]))
        except (KeyError, TypeError, InvalidOperation):
            self.unreadable.append(seq)

    def groups(self, excluded: Iterable[int] = ()) -> list[dict[str, Any]]:
        skip = set(excluded)
        totals: dict[GroupKey, list[Any]] = {}
        for seq, (key, amount) in self.sales.items():
            if seq in skip:
                continue
            total = totals.setdefault(key, [0, Decimal("0.00")])
            total[0] += 1
            total[1] += amount
        return [
            {"business_day": k[0], "channel": k[1], "location_id": k[2], "currency": k[3],
             "sales": count, "amount": f"{amount:.2f}"}
            for k, (count, amount) in sorted(totals.items(), key=lambda item: tuple(str(p) for p in item[0]))
        ]


def compare(ledger_groups: Iterable[Mapping[str, Any]], finance_groups: Iterable[Mapping[str, Any]]
            ) -> list[dict[str, Any]]:
    """Every group where the ledger and finance disagree (a group missing on one side counts as 0)."""

    def index(groups: Iterable[Mapping[str, Any]]) -> dict[GroupKey, Decimal]:
        out: dict[GroupKey, Decimal] = {}
        for g in groups:
            key = (str(g["business_day"]), str(g["channel"]), g.get("location_id"), str(g["currency"]))
            out[key] = out.get(key, Decimal("0")) + Decimal(str(g["amount"]))
        return out

    ours, theirs = index(ledger_groups), index(finance_groups)
    differences = []
    for key in sorted(ours.keys() | theirs.keys(), key=lambda k: tuple(str(p) for p in k)):
        on_ledger, in_finance = ours.get(key, Decimal("0.00")), theirs.get(key, Decimal("0.00"))
        if on_ledger != in_finance:
            differences.append({
                "business_day": key[0], "channel": key[1], "location_id": key[2], "currency": key[3],
                "ledger": f"{on_ledger:.2f}", "finance": f"{in_finance:.2f}",
                "difference": f"{on_ledger - in_finance:.2f}",
            })
    return differences
