"""Reading a settlement file (CSV or a JSON list) into checked rows, or a report of every bad row.

A file is all or nothing: one bad row refuses the whole file, and the 422 names each bad row by
`line` (the CSV line, header = 1; for a JSON list the element's position, first = 1), `field` and
`problem`, so the sender can fix them all in one go.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from services.finance.schemas import SETTLEMENT_FIELDS, SettlementIn
from shared.errors import ValidationFailed

MAX_REPORTED = 1000
REQUIRED = tuple(name for name, info in SettlementIn.model_fields.items() if info.is_required())
Key = tuple[str, str]


class RowErrors:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.total = 0

    def add(self, line: int, field: str, problem: str) -> None:
        self.total += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append({"line": line, "field": field, "problem": problem})

    def raise_if_any(self) -> None:
        if self.total:
            more = f" (first {MAX_REPORTED} listed)" if self.total > MAX_REPORTED else ""
            raise ValidationFailed(self.errors, f"{self.total} problem(s) in the file; nothing was imported{more}")


def check_rows(rows: Iterable[tuple[int, dict[str, Any]]], errors: RowErrors) -> Iterator[tuple[int, SettlementIn]]:
    """Validate each row; a (provider, external_id) given twice in one file must say the same thing."""
    seen: dict[Key, tuple[int, SettlementIn]] = {}
    for line, raw in rows:
        try:
            row = SettlementIn.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = ".".join(str(p) for p in err["loc"]) or "row"
                errors.add(line, field, err["msg"])
            continue
        key = (row.provider, row.external_id)
        first = seen.get(key)
        if first is None:
            seen[key] = (line, row)
            yield line, row
        elif first[1] != row:
            errors.add(line, "external_id", f"repeats line {first[0]} ({row.provider}, {row.external_id}) "
                                            "with different values")


def csv_rows(text: str, errors: RowErrors) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV with a header line naming the columns (any order; empty optional cells = default)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        errors.add(1, "header", str(exc))
        return
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in SETTLEMENT_FIELDS]
    for name in unknown:
        errors.add(1, name or "header", "unknown column")
    for name in REQUIRED:
        if name not in names:
            errors.add(1, name, "missing column")
    if len(set(names)) != len(names):
        errors.add(1, "header", "a column is named twice")
    if errors.total:
        return
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.add(reader.line_num, "row", str(exc))
            return
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            errors.add(line, "row", f"{len(cells)} cells, the header has {len(names)}")
            continue
        yield line, {n: c.strip() for n, c in zip(names, cells, strict=True) if c.strip() or n in REQUIRED}


def json_rows(items: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate(items, start=1)


def decode_csv(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed([{"line": 0, "field": "body", "problem": f"not UTF-8: {exc.reason}"}]) from None
