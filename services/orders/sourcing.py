"""Sourcing: which locations fill which lines. Pure functions over a snapshot of availability.

A policy gets the lines and, per SKU, the candidate locations with their sellable units (already
narrowed by the use case: the pickup store only for pickup, ship-enabled locations for ship). It
returns allocations or raises `Unfillable` naming the SKUs no combination of candidates can fill.
Policies never split a line that one location can fill. The snapshot is read without locks; the
reservation re-checks every allocation under lock and the use case sources again if it lost a race.

Add a policy by writing a class with `name` and `allocate` and listing it in POLICIES; the setting
`OMNISTOCK_ORDERS_SOURCING_POLICY` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class LineRequest:
    line_no: int
    sku: str
    qty: int


class Candidate(NamedTuple):  # a tuple: sourcing builds dozens per order
    location_id: str
    available: int
    distance_km: float | None  # from ship_to; None when the order gave none
    priority: int  # lower is preferred (warehouses 10, stores 100 in the demo data)

    @property
    def rank(self) -> tuple[float, int, str]:
        return (self.distance_km if self.distance_km is not None else 0.0, self.priority, self.location_id)


class Allocation(NamedTuple):
    line_no: int
    sku: str
    location_id: str
    qty: int


class Unfillable(Exception):
    def __init__(self, short: list[dict[str, object]]) -> None:
        super().__init__(", ".join(str(s["sku"]) for s in short))
        self.short = short


Stock = Mapping[str, Sequence[Candidate]]


class SourcingPolicy(Protocol):
    name: str

    def allocate(self, lines: Sequence[LineRequest], stock: Stock) -> list[Allocation]: ...


def _check_fillable(lines: Sequence[LineRequest], stock: Stock) -> None:
    short = []
    for line in lines:
        available = sum(c.available for c in stock.get(line.sku, ()))
        if available < line.qty:
            short.append({"sku": line.sku, "requested": line.qty, "available": available})
    if short:
        raise Unfillable(short)


def _split(line: LineRequest, candidates: Sequence[Candidate], preferred: Sequence[str]) -> list[Allocation]:
    """Fill a line no single location can fill: chosen locations first, then by rank."""
    order = {loc: i for i, loc in enumerate(preferred)}
    ranked = sorted(candidates, key=lambda c: (order.get(c.location_id, len(order)), c.rank))
    out, wanted = [], line.qty
    for cand in ranked:
        step = min(cand.available, wanted)
        if step > 0:
            out.append(Allocation(line.line_no, line.sku, cand.location_id, step))
            wanted -= step
        if wanted == 0:
            break
    return out


class FewestShipments:
    """Fewest locations, then nearest to ship_to, then location priority, then id.

    One location for the whole order when any can; else a greedy cover (each round takes the location
    that fills the most remaining lines, ties to the better rank), which is optimal for the one- and
    two-location orders that dominate and close to it beyond. A line no location can fill alone is
    split, preferring locations already shipping.
    """

    name = "fewest_shipments"

    def allocate(self, lines: Sequence[LineRequest], stock: Stock) -> list[Allocation]:
        _check_fillable(lines, stock)
        fits: dict[int, dict[str, Candidate]] = {
            line.line_no: {c.location_id: c for c in stock.get(line.sku, ()) if c.available >= line.qty}
            for line in lines
        }
        whole = [line for line in lines if fits[line.line_no]]
        split = [line for line in lines if not fits[line.line_no]]
        ranks = {c.location_id: c.rank for cands in stock.values() for c in cands}
        chosen: list[str] = []
        remaining = list(whole)
        out: list[Allocation] = []
        while remaining:
            counts: dict[str, int] = {}
            for line in remaining:
                for loc in fits[line.line_no]:
                    counts[loc] = counts.get(loc, 0) + 1
            best = min(counts, key=lambda loc: (-counts[loc], ranks[loc]))
            chosen.append(best)
            for line in remaining:
                if best in fits[line.line_no]:
                    out.append(Allocation(line.line_no, line.sku, best, line.qty))
            remaining = [line for line in remaining if best not in fits[line.line_no]]
        for line in split:
            parts = _split(line, stock[line.sku], chosen)
            chosen.extend(p.location_id for p in parts if p.location_id not in chosen)
            out.extend(parts)
        return sorted(out, key=lambda a: (a.line_no, a.location_id))


class Nearest:
    """Each line from its own best-ranked location that can fill it (nearest first), split if none can."""

    name = "nearest"

    def allocate(self, lines: Sequence[LineRequest], stock: Stock) -> list[Allocation]:
        _check_fillable(lines, stock)
        out: list[Allocation] = []
        for line in lines:
            fitting = [c for c in stock[line.sku] if c.available >= line.qty]
            if fitting:
                best = min(fitting, key=lambda c: c.rank)
                out.append(Allocation(line.line_no, line.sku, best.location_id, line.qty))
            else:
                out.extend(_split(line, stock[line.sku], []))
        return out


POLICIES: dict[str, SourcingPolicy] = {p.name: p for p in (FewestShipments(), Nearest())}
