"""Pure pieces: the run's Merkle root, item lines, tolerances, duplicates against equal instalments."""

from __future__ import annotations

import hashlib
from decimal import Decimal

from ledger import merkle
from services.finance import domain, repository
from services.finance.domain import Item, OrderPosition, Tolerances


def test_the_run_root_is_the_rfc9162_root() -> None:
    for n in (0, 1, 2, 3, 5, 8, 13, 100):
        leaves = [hashlib.sha256(str(i).encode()).digest() for i in range(n)]
        assert domain.merkle_root(leaves) == merkle.root(leaves)


def test_item_lines_escape_what_copy_would_misread() -> None:
    item = Item("settlement", "missing_sale", "EUR", Decimal("0.00"), Decimal("5.00"), order_ref="a\\b\tc",
                settlement_ids=(3, 4), note=None)
    line = repository.item_line(9, 1, item)
    assert line.split("\t") == ["9", "1", "settlement", "missing_sale", "\\N", "a\\\\b\\tc", "\\N", "\\N", "\\N",
                                "EUR", "0.00", "0.00", "5.00", "5.00", "{}", "{3,4}", "\\N\n"]


def position(**changes: object) -> OrderPosition:
    base: dict[str, object] = dict(order_id="o", channel="online", location_id="wh", currency="EUR",
                                   paid_at_till=False, sales_total=Decimal("30.00"), sells=True, returns=False,
                                   sold=Decimal("30.00"), returned=Decimal("0.00"), captures=(Decimal("10.00"),) * 3,
                                   capture_ids=(1, 2, 3), currencies=frozenset({"EUR"}))
    return OrderPosition(**{**base, **changes})  # type: ignore[arg-type]


def test_three_equal_instalments_match_and_a_fourth_is_a_duplicate() -> None:
    assert domain.classify(position(), Tolerances()).cls == "matched"
    four = position(captures=(Decimal("10.00"),) * 4, capture_ids=(1, 2, 3, 4))
    assert domain.classify(four, Tolerances()).cls == "duplicate"


def test_a_tolerance_matches_small_differences_and_says_so() -> None:
    short = position(captures=(Decimal("29.98"),), capture_ids=(1,))
    assert domain.classify(short, Tolerances()).cls == "amount_mismatch"
    item = domain.classify(short, Tolerances(amount=Decimal("0.02")))
    assert (item.cls, item.note) == ("matched", "within tolerance (-0.02)")


def test_an_over_refund_repeating_a_refund_is_a_duplicate() -> None:
    p = position(returns=True, returned=Decimal("10.00"), captures=(Decimal("30.00"),), capture_ids=(1,),
                 refunds=(Decimal("10.00"), Decimal("10.00")), refund_ids=(2, 3))
    assert domain.classify(p, Tolerances()).cls == "duplicate"


def test_cash_within_the_cash_tolerance_matches() -> None:
    item = domain.tender_item("s", "cash", "EUR", Decimal("100.00"), Decimal("99.95"), Tolerances(cash=Decimal("0.05")))
    assert item.cls == "matched"
    assert domain.tender_item("s", "cash", "EUR", Decimal("100.00"), None, Tolerances()).cls == "missing_payment"
