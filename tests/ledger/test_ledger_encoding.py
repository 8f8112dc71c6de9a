from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ledger.encoding import canonical_bytes, format_timestamp, parse_timestamp


def test_canonical_bytes_sort_keys_drop_whitespace_and_keep_unicode() -> None:
    entry = {"total": "12.30", "kind": "reconciled_sale", "store": "Zürich", "lines": [{"b": 1, "a": None}]}
    assert canonical_bytes(entry) == (
        '{"kind":"reconciled_sale","lines":[{"a":null,"b":1}],"store":"Zürich","total":"12.30"}'.encode()
    )


def test_the_same_entry_in_another_key_order_has_the_same_bytes() -> None:
    assert canonical_bytes({"a": 1, "b": [True, False]}) == canonical_bytes({"b": [True, False], "a": 1})


@pytest.mark.parametrize("value", [1.5, {"amount": 12.3}, [0.0], {"deep": [{"x": float("nan")}]}])
def test_floats_are_refused_anywhere(value: object) -> None:
    with pytest.raises(ValueError, match="floats are not allowed"):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {(1, 2): "b"}}])
def test_non_string_keys_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="keys must be strings"):
        canonical_bytes(value)


@pytest.mark.parametrize("value", [Decimal("1.10"), {"at": datetime.now(UTC)}, {b"x"}, "\ud800"])
def test_values_without_one_json_spelling_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        canonical_bytes(value)


def test_timestamps_have_exactly_one_spelling() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 123, tzinfo=timezone(timedelta(hours=2)))
    text = format_timestamp(moment)
    assert text == "2024-05-01T12:00:00.000123Z"
    assert parse_timestamp(text) == moment
    for other in ("2024-05-01T12:00:00Z", "2024-5-01T12:00:00.000123Z", "2024-05-01T12:00:00.000123+00:00"):
        with pytest.raises(ValueError):
            parse_timestamp(other)
    with pytest.raises(ValueError):
        format_timestamp(datetime(2024, 5, 1))
