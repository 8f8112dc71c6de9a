"""A settlement file read as it arrives gives the same rows and the same report however it is cut, and
the quick row check never accepts what SettlementIn refuses (no database: the file's reading alone)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.finance import settlement_file
from services.finance.schemas import SettlementIn
from services.finance.settlement_file import RowErrors, SettlementFile, StagedRow, check_row, split_lines

HEADER = "provider,external_id,order_id,amount,fee,currency,settled_at,type\r\n"


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        if at >= len(data):
            break
        yield data[at:at + size]
        at += size
    if at < len(data):
        yield data[at:]


async def read(kind: settlement_file.Kind, data: bytes, sizes: list[int]) -> tuple[list[tuple[int, StagedRow]],
                                                                                   list[dict[str, Any]], int]:
    errors = RowErrors()
    file = SettlementFile(kind, errors)
    rows = [row async for batch in file.batches(_chunks(data, sizes)) for row in batch]
    return rows, errors.errors, file.rows


def cuts(data: bytes, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 97) for _ in range(len(data))]


TRICKY_CSV = (
    "\ufeff" + HEADER
    + "acme,a1,\"ORD,1\",10.00,0.30,EUR,2024-05-01T10:00:00Z,capture\r\n"
    + "acme,a2,\"ORD \"\"2\"\"\",1.5,,EUR,2024-05-01T10:00:00+02:00,refund\r\n"
    + "\r\n"
    + "acme,a3,\"line\r\nbreak\",3,0,EUR,2024-05-01 11:00:00,\r"  # a quoted CR LF (refused as text) and a lone CR
    + "acme,a4,ORD-4,4.00,0.00,EUR,2024-05-01T12:00:00.123456Z,capture\n"
    + "acme,a5,\\\\back\\slash,5.00,0.00,EUR,2024-05-01T12:00:00Z,capture"  # no line end at the end
).encode()


async def test_a_csv_read_in_pieces_of_any_size_gives_the_rows_and_report_of_the_whole_file() -> None:
    whole = await read("csv", TRICKY_CSV, [len(TRICKY_CSV)])
    rows, errors, seen = whole
    assert [line for line, _ in rows] == []  # line 6 is refused: nothing is handed on
    assert errors == [{"line": 6, "field": "order_id",
                       "problem": "control character U+000D at position 4 is not allowed in text"}]
    assert seen == 5
    for seed in range(40):
        assert await read("csv", TRICKY_CSV, cuts(TRICKY_CSV, seed)) == whole, seed
    for size in (1, 2, 3, 7, 64):
        assert await read("csv", TRICKY_CSV, [size] * len(TRICKY_CSV)) == whole, size


async def test_a_clean_csv_gives_every_row_by_its_physical_line() -> None:
    data = TRICKY_CSV.replace(b'"line\r\nbreak"', b'"line break"')
    for sizes in ([len(data)], [1] * len(data), cuts(data, 1)):
        rows, errors, seen = await read("csv", data, sizes)
        assert errors == []
        assert seen == 5
        assert rows == [
            # A time PostgreSQL reads as Python does goes as sent; one without an offset as its UTC instant.
            (2, ("acme", "a1", "ORD,1", "capture", "10.00", "0.30", "EUR", "2024-05-01T10:00:00Z")),
            (3, ("acme", "a2", 'ORD "2"', "refund", "1.5", "0.00", "EUR", "2024-05-01T10:00:00+02:00")),
            (5, ("acme", "a3", "line break", "capture", "3", "0", "EUR", "2024-05-01T11:00:00+00:00")),
            (6, ("acme", "a4", "ORD-4", "capture", "4.00", "0.00", "EUR", "2024-05-01T12:00:00.123456Z")),
            (7, ("acme", "a5", "\\\\back\\slash", "capture", "5.00", "0.00", "EUR", "2024-05-01T12:00:00Z")),
        ]


async def test_bad_rows_are_all_reported_and_nothing_is_handed_on_once_one_is_found() -> None:
    good = "acme,g{i},ORD,1.00,0.00,EUR,2024-05-01T10:00:00Z,capture\n"
    data = (HEADER + "".join(good.format(i=i) for i in range(5000)) + "acme,bad,ORD,1.001,0,EUR,x,capture\n"
            + "".join(good.format(i=i) for i in range(5000, 9000)) + "acme,short,ORD\n").encode()
    errors = RowErrors()
    file = SettlementFile("csv", errors)
    handed = [len(batch) async for batch in file.batches(_chunks(data, [4096] * len(data)))]
    assert sum(handed) < 5000  # batches went on as they filled, none after the bad row
    assert file.rows == 9002
    assert [(e["line"], e["field"]) for e in errors.errors] == [(5002, "amount"), (5002, "settled_at"),
                                                                (9003, "row")]


async def test_an_unclosed_quote_stops_the_reading_instead_of_holding_the_file() -> None:
    data = (HEADER + 'acme,a1,"ORD,1.00,0,EUR,2024-05-01T10:00:00Z,capture\n'
            + "acme,a2,ORD,1.00,0,EUR,2024-05-01T10:00:00Z,capture\n" * 2000).encode()
    rows, errors, _ = await read("csv", data, [1000] * len(data))
    assert rows == [] and len(errors) == 1 and "quote left open" in errors[0]["problem"]


async def test_bytes_that_are_not_utf8_are_reported_at_their_line() -> None:
    data = (HEADER + "acme,a1,ORD,1.00,0,EUR,2024-05-01T10:00:00Z,capture\n").encode() + b"acme,\xff\xfe,ORD\n"
    for sizes in ([len(data)], [5] * len(data)):
        rows, errors, _ = await read("csv", data, sizes)
        assert rows == [] and [(e["line"], e["field"]) for e in errors] == [(3, "body")], sizes


async def test_a_csv_header_with_unknown_or_missing_columns_is_refused_at_line_1() -> None:
    rows, errors, _ = await read("csv", b"provider,external_id,colour,colour\nx,y,red,blue\n", [3] * 100)
    assert rows == []
    assert {(e["line"], e["field"]) for e in errors} == {(1, "colour"), (1, "order_id"), (1, "amount"),
                                                        (1, "currency"), (1, "settled_at"), (1, "header")}


def _line(i: int, **change: Any) -> bytes:
    row = {"provider": "acme", "external_id": f"j{i}", "order_id": f"ORD-{i}", "amount": f"{i}.{i % 100:02d}",
           "currency": "EUR", "settled_at": "2024-05-01T10:00:00Z", **change}
    return orjson.dumps(row)


async def test_json_lines_in_pieces_give_the_rows_and_report_of_the_whole_file() -> None:
    data = (b"\xef\xbb\xbf" + _line(1) + b"\r\n" + _line(2, fee="0.10") + b"\n\n   \n" + _line(3, amount=3)
            + b"\n[1, 2]\n{not json\n" + _line(4, colour="red") + b"\n" + _line(5))
    whole = await read("jsonl", data, [len(data)])
    rows, errors, seen = whole
    assert rows == []
    assert [(e["line"], e["field"]) for e in errors] == [(5, "amount"), (6, "row"), (7, "row"), (8, "colour")]
    assert seen == 7
    for seed in range(20):
        assert await read("jsonl", data, cuts(data, seed)) == whole, seed
    clean = b"\xef\xbb\xbf" + _line(1) + b"\r\n" + _line(2, fee="0.10") + b"\n\n" + _line(5)
    rows, errors, _ = await read("jsonl", clean, [2] * len(clean))
    assert errors == [] and [(line, row[1], row[5]) for line, row in rows] == [(1, "j1", "0.00"), (2, "j2", "0.10"),
                                                                               (4, "j5", "0.00")]


def test_split_lines_keeps_a_cr_that_may_be_followed_by_its_lf() -> None:
    assert split_lines("a\r\nb\rc\nd", final=False) == (["a\r\n", "b\r", "c\n"], "d")
    assert split_lines("a\r", final=False) == ([], "a\r")
    assert split_lines("a\r", final=True) == (["a\r"], "")
    assert split_lines("a\x0cb\nc", final=False) == (["a\x0cb\n"], "c")  # a form feed does not end a CSV line
    assert split_lines("a\x0cb\nc", final=True) == (["a\x0cb\n", "c"], "")


# --- the quick check against SettlementIn -------------------------------------------------------------

TEXTS = st.one_of(st.text(max_size=130), st.sampled_from(["", " ", "ORD-1", "x" * 128, "x" * 129, "a\tb", "é✓"]))
AMOUNTS = st.one_of(st.sampled_from(["0", "0.00", "10.5", "10.50", "10.505", "-1.00", "1e3", " 1.00", "1.00\n",
                                     "999999999999.99", "1000000000000.00", "١٢", "+1.00", ".5", "5."]),
                    st.from_regex(r"\A-?[0-9]{1,13}(\.[0-9]{0,3})?\Z"), st.integers(), st.floats(), st.none())
TIMES = st.one_of(st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01 10:00:00", "2024-05-01T10:00:00+05:30",
                                   "2024-05-01", "20240501T100000Z", "1969-12-31T23:59:59Z", "9001-01-01T00:00:00Z",
                                   " 2024-05-01T10:00:00Z ", "2024-02-30T00:00:00Z", "2024-05-01T10:00:00.5-03:00",
                                   "yesterday", ""]), st.datetimes().map(lambda d: d.isoformat()), st.integers())
VALID = {"provider": "acme", "external_id": "e1", "order_id": "ORD-1", "amount": "10.00", "currency": "EUR",
         "settled_at": "2024-05-01T10:00:00Z"}
# A valid row with some of its fields (or an unknown one) replaced: most rows then fail one rule only,
# the way a provider's file goes wrong.
CHANGES = st.fixed_dictionaries({}, optional={
    "provider": TEXTS, "external_id": TEXTS, "order_id": TEXTS, "amount": AMOUNTS, "fee": AMOUNTS,
    "currency": st.sampled_from(["EUR", "eur", "EURO", "E1R", "EUR\n", ""]), "settled_at": TIMES,
    "type": st.sampled_from(["capture", "refund", "chargeback", "", "Capture"]), "colour": st.just("red")})
ROWS = st.one_of(CHANGES.map(lambda change: {**VALID, **change}),
                 st.tuples(CHANGES, st.sets(st.sampled_from(sorted(VALID)), max_size=2)).map(
                     lambda c: {k: v for k, v in {**VALID, **c[0]}.items() if k not in c[1]}))


@example({**VALID, "colour": "red"})
@example({**VALID, "amount": "1.00\n"})
@example({**VALID, "settled_at": "1969-12-31T23:59:59Z"})
@example({**VALID, "provider": "x" * 129})
@given(ROWS)
@settings(max_examples=600, deadline=None)
def test_the_quick_check_accepts_only_what_settlementin_accepts_with_the_same_values(raw: dict[str, Any]) -> None:
    quick = settlement_file._quick(raw)
    try:
        model = SettlementIn.model_validate(raw)
    except ValidationError:
        assert quick is None, raw
        return
    staged = check_row(1, raw, RowErrors())
    assert staged is not None
    for row in (quick, staged):
        if row is None:
            continue
        provider, external_id, order_id, kind, amount, fee, currency, settled_at = row
        assert (provider, external_id, order_id, kind, currency) == (model.provider, model.external_id,
                                                                     model.order_id, model.type, model.currency)
        assert (Decimal(amount), Decimal(fee)) == (model.amount, model.fee)
        assert datetime.fromisoformat(settled_at) == model.settled_at
        assert settled_at.endswith(("Z", "+00:00")) or settlement_file._OFFSET_TIME.fullmatch(settled_at)


def test_a_row_that_is_not_an_object_is_reported() -> None:
    errors = RowErrors()
    assert check_row(3, ["acme"], errors) is None
    assert errors.errors == [{"line": 3, "field": "row", "problem": "a settlement is a JSON object"}]


@pytest.mark.parametrize("value", ["ab\\c", "\\"])
def test_a_backslash_survives_the_copy_text(value: str) -> None:
    from services.finance.repository import staging_copy

    line = staging_copy([(1, (value, "e", "o", "capture", "1.00", "0.00", "EUR", "2024-05-01T00:00:00+00:00"))])
    assert line.split(b"\t")[1] == value.replace("\\", "\\\\").encode()
