"""The sourcing policies as pure functions: no database needed."""

from __future__ import annotations

import pytest

from services.orders.sourcing import Candidate, FewestShipments, LineRequest, Nearest, Unfillable


def cand(location_id: str, available: int, km: float | None = None, priority: int = 100) -> Candidate:
    return Candidate(location_id, available, km, priority)


def plan(policy: object, lines: list[tuple[str, int]], stock: dict[str, list[Candidate]]) -> list[tuple[str, str, int]]:
    requests = [LineRequest(i + 1, sku, qty) for i, (sku, qty) in enumerate(lines)]
    return [(a.sku, a.location_id, a.qty) for a in policy.allocate(requests, stock)]  # type: ignore[attr-defined]


def test_one_location_for_everything_beats_nearer_split_shipments() -> None:
    stock = {"A": [cand("near", 5, 1), cand("far", 5, 300)], "B": [cand("far", 5, 300), cand("other", 5, 2)]}
    assert plan(FewestShipments(), [("A", 1), ("B", 1)], stock) == [("A", "far", 1), ("B", "far", 1)]


def test_ties_go_to_the_nearest_then_priority_then_id() -> None:
    stock = {"A": [cand("x", 5, 10, 100), cand("y", 5, 5, 100)]}
    assert plan(FewestShipments(), [("A", 1)], stock) == [("A", "y", 1)]
    stock = {"A": [cand("store", 5, None, 100), cand("dc", 5, None, 10)]}
    assert plan(FewestShipments(), [("A", 1)], stock) == [("A", "dc", 1)]
    stock = {"A": [cand("b", 5), cand("a", 5)]}
    assert plan(FewestShipments(), [("A", 1)], stock) == [("A", "a", 1)]


def test_greedy_cover_uses_two_locations_when_none_has_everything() -> None:
    stock = {"A": [cand("p", 5, 1), cand("q", 5, 2)], "B": [cand("q", 5, 2)], "C": [cand("r", 5, 1)]}
    assert plan(FewestShipments(), [("A", 1), ("B", 1), ("C", 1)], stock) == [
        ("A", "q", 1), ("B", "q", 1), ("C", "r", 1)]


def test_a_line_is_split_only_when_no_location_can_fill_it_and_prefers_chosen_locations() -> None:
    stock = {"A": [cand("p", 3, 1), cand("q", 4, 50), cand("r", 10, 99)], "B": [cand("q", 1, 50)]}
    # A=12 cannot come from one place; q already ships B, so it is used before the nearer p
    assert plan(FewestShipments(), [("A", 12), ("B", 1)], stock) == [("A", "p", 3), ("A", "q", 4), ("A", "r", 5),
                                                                       ("B", "q", 1)]
    assert plan(FewestShipments(), [("A", 10)], stock) == [("A", "r", 10)]  # r can: no split


def test_unfillable_names_every_short_sku() -> None:
    stock = {"A": [cand("p", 3)], "B": [cand("p", 3)]}
    with pytest.raises(Unfillable) as exc:
        FewestShipments().allocate([LineRequest(1, "A", 4), LineRequest(2, "B", 1), LineRequest(3, "C", 1)], stock)
    assert [s["sku"] for s in exc.value.short] == ["A", "C"]


def test_nearest_policy_takes_each_line_from_its_own_nearest() -> None:
    stock = {"A": [cand("near", 5, 1), cand("far", 5, 300)], "B": [cand("far", 5, 300), cand("other", 5, 2)]}
    assert plan(Nearest(), [("A", 1), ("B", 1)], stock) == [("A", "near", 1), ("B", "other", 1)]
