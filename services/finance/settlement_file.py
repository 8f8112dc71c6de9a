"""Reading a settlement file (CSV, JSON lines or a JSON list) into checked rows, or a report of every bad row.

A file is all or nothing: one bad row refuses the whole file, and the 422 names each bad row by
`line` (the CSV's or the JSON lines' physical line, header = 1; for a JSON list the element's
position, first = 1), `field` and `problem`, so the sender can fix them all in one go.

A file is read as it arrives, never whole: `SettlementFile.batches(chunks)` turns the body's chunks
into batches of checked rows as soon as each row is complete (the import COPYs them while the rest
is still on its way), and after the first bad row goes on reading only to report, yielding nothing.
Memory is one chunk, one batch and the report (at most MAX_REPORTED rows), whatever the file's size.
Checks that need the whole file (a key given twice with other values) are the database's, after the
COPY (repository.import_settlements).
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from datetime import UTC
from operator import itemgetter
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from services.finance.schemas import SETTLEMENT_FIELDS, SettlementIn, aware_datetime
from shared.errors import ValidationFailed
from shared.money import MONEY_PATTERN
from shared.text import REFUSED

MAX_REPORTED = 1000
BATCH_ROWS = 2000
# No settlement row comes near this; a longer one is a file without line ends or a quote left open,
# and reading on would hold the rest of the file in memory.
MAX_RECORD_CHARS = 65_536
REQUIRED = tuple(name for name, info in SettlementIn.model_fields.items() if info.is_required())
Kind = Literal["csv", "jsonl", "json"]
# JSON lines has two names in use (neither registered): both are taken, and answered the same.
MEDIA_TYPES: dict[str, Kind] = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}
_CSV_ORDER = ("provider", "external_id", "order_id", "amount", "fee", "type", "currency", "settled_at")
SUFFIXES: dict[str, Kind] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}

# (provider, external_id, order_id, type, amount, fee, currency, settled_at): text as the staging
# table's COPY takes it (repository.staging_copy); amounts as sent or normalised, times in UTC.
StagedRow = tuple[str, str, str, str, str, str, str, str]
Batch = list[tuple[int, StagedRow]]


class RowErrors:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.total = 0

    def add(self, line: int, field: str, problem: str) -> None:
        self.total += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append({"line": line, "field": field, "problem": problem})

    def problem(self) -> ValidationFailed:
        more = f" (first {MAX_REPORTED} listed)" if self.total > MAX_REPORTED else ""
        return ValidationFailed(self.errors, f"{self.total} problem(s) in the file; nothing was imported{more}")

    def raise_if_any(self) -> None:
        if self.total:
            raise self.problem()


# --- one row ------------------------------------------------------------------------------------------

# SettlementIn is the rule. Validating a model costs ~14 us a row (seconds for a provider's daily
# file), so a row is first tried against the same rules written out plainly (~2 us); whatever that
# does not accept outright goes to SettlementIn, which decides and words the problems. The quick path
# only ever accepts less (tests/services/finance/test_settlement_file.py holds it to SettlementIn).
_MONEY = re.compile(MONEY_PATTERN.removeprefix("^-?").removesuffix("$"))
_CURRENCY = re.compile("[A-Z]{3}")
_TEXT_MAX = 128
_TYPES = ("capture", "refund")
# A time PostgreSQL reads exactly as Python does goes to the COPY as sent (once Python has read it, for
# the date's validity and the year's range); any other is sent as its UTC instant. PostgreSQL takes
# offsets up to 15:59, Python up to 23:59.
_OFFSET_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-](?:0\d|1[0-5]):[0-5]\d)")
_currencies: set[str] = set()  # the codes seen to keep the rule: at most 26^3


def _quick_values(provider: str, external_id: str, order_id: str, amount: str, fee: str, kind: str, currency: str,
                  settled_at: str) -> StagedRow | None:
    """The row as staged, if its values (all str) plainly keep SettlementIn's rules; None to let it decide."""
    if not (0 < len(provider) <= _TEXT_MAX and 0 < len(external_id) <= _TEXT_MAX and 0 < len(order_id) <= _TEXT_MAX):
        return None
    if REFUSED.search(provider + external_id + order_id) is not None:
        return None
    if _MONEY.fullmatch(amount) is None or _MONEY.fullmatch(fee) is None or kind not in _TYPES:
        return None
    if currency not in _currencies:
        if _CURRENCY.fullmatch(currency) is None:
            return None
        _currencies.add(currency)
    try:
        when = aware_datetime(settled_at)
    except ValueError:
        return None
    if _OFFSET_TIME.fullmatch(settled_at) is None:
        settled_at = when.astimezone(UTC).isoformat()
    return provider, external_id, order_id, kind, amount, fee, currency, settled_at


def _quick(raw: dict[str, Any]) -> StagedRow | None:
    """A JSON object's row as staged, if it plainly keeps SettlementIn's rules; None to let it decide."""
    try:
        provider, external_id, order_id = raw["provider"], raw["external_id"], raw["order_id"]
        amount, currency, settled_at = raw["amount"], raw["currency"], raw["settled_at"]
    except KeyError:
        return None
    fee, kind = raw.get("fee", "0.00"), raw.get("type", "capture")
    if len(raw) != len(REQUIRED) + ("fee" in raw) + ("type" in raw):
        return None  # a field SettlementIn does not know
    if not (type(provider) is str and type(external_id) is str and type(order_id) is str and type(amount) is str
            and type(fee) is str and type(kind) is str and type(currency) is str and type(settled_at) is str):
        return None
    return _quick_values(provider, external_id, order_id, amount, fee, kind, currency, settled_at)


def check_row(line: int, raw: Any, errors: RowErrors) -> StagedRow | None:
    """The row as staged, or None with its problems added to `errors`."""
    if type(raw) is dict and (staged := _quick(raw)) is not None:
        return staged
    if not isinstance(raw, dict):
        errors.add(line, "row", "a settlement is a JSON object")
        return None
    try:
        row = SettlementIn.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"]) or "row"
            errors.add(line, field, err["msg"])
        return None
    return (row.provider, row.external_id, row.order_id, row.type, f"{row.amount:.2f}", f"{row.fee:.2f}",
            row.currency, row.settled_at.astimezone(UTC).isoformat())


# --- a file, as it arrives ----------------------------------------------------------------------------


class _NeedMore(Exception):
    """The csv reader reached the last line that has arrived in the middle of a record."""


class _Lines:
    """The csv reader's input: the lines that have arrived. Running dry inside a record (a quoted cell
    spanning lines whose end has not come) raises _NeedMore, and `put_back` returns that record's
    lines, so it is read again whole once more of the file is here."""

    def __init__(self) -> None:
        self.pending: deque[str] = deque()
        self.taken: list[str] = []
        self.ended = False
        self.line = 0  # physical lines handed to the reader, header = 1

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.pending:
            text = self.pending.popleft()
            self.taken.append(text)
            self.line += 1
            return text
        if self.ended:
            raise StopIteration
        raise _NeedMore

    def put_back(self) -> None:
        self.pending.extendleft(reversed(self.taken))
        self.line -= len(self.taken)
        self.taken.clear()


# What io.StringIO(newline="") ends a line with (the csv module's documented way to read a file);
# str.splitlines knows more line ends than that, so it is used only on text holding none of those.
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")
_OTHER_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def split_lines(text: str, final: bool) -> tuple[list[str], str]:
    """Complete lines of `text` (with their ends) and what is left for the next chunk; at the end of
    the file (`final`) the last line need not end. A CR at the very end waits: its LF may come next."""
    if _OTHER_BREAKS.search(text) is None:
        lines = text.splitlines(keepends=True)
        tail = "" if final or not lines or lines[-1].endswith("\n") else lines.pop()
    else:
        lines = _LINE.findall(text)
        rest = text[sum(map(len, lines)):]
        if final and rest:
            lines.append(rest)
        tail = "" if final else rest
    if not final and lines and lines[-1].endswith("\r"):
        tail = lines.pop() + tail
    return lines, tail


class SettlementFile:
    """One settlement file of `kind`, read once. `rows` counts the rows checked, good or bad."""

    def __init__(self, kind: Kind, errors: RowErrors) -> None:
        self.kind = kind
        self.errors = errors
        self.rows = 0
        self._batch: Batch = []
        self._names: list[str] | None = None  # a CSV's columns, from its header
        self._pick: Callable[[list[str]], tuple[str, ...]] = tuple  # set by the CSV header

    async def batches(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[Batch]:
        """Batches of checked rows (up to BATCH_ROWS each) while the file is free of problems; the rest
        of the file is still read (and checked) to report every bad row, but nothing more is yielded."""
        read = self._csv(chunks) if self.kind == "csv" else self._json_lines(chunks)
        async for _ in read:
            if (batch := self._full_batch()) is not None:
                yield batch
        if (batch := self._last_batch()) is not None:
            yield batch

    async def listed(self, items: Iterable[Any]) -> AsyncIterator[Batch]:
        """The same for a JSON list already parsed (a small body): rows by position, first = 1."""
        for position, raw in enumerate(items, start=1):
            self._row(position, raw)
            if (batch := self._full_batch()) is not None:
                yield batch
        if (batch := self._last_batch()) is not None:
            yield batch

    def _full_batch(self) -> Batch | None:
        """After a row: a batch to hand on once BATCH_ROWS are ready, while the file is free of problems."""
        if self.errors.total:
            self._batch.clear()  # the file is refused: the rest is read to report, not to import
            return None
        return self._take() if len(self._batch) >= BATCH_ROWS else None

    def _last_batch(self) -> Batch | None:
        return self._take() if self._batch and not self.errors.total else None

    def _take(self) -> Batch:
        batch, self._batch = self._batch, []
        return batch

    def _row(self, line: int, raw: Any) -> None:
        self.rows += 1
        staged = check_row(line, raw, self.errors)
        if staged is not None and not self.errors.total:
            self._batch.append((line, staged))

    async def _json_lines(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[None]:
        tail, line, readable = b"", 0, True
        async for chunk in chunks:
            if not readable:
                yield None
                continue
            pieces = (tail + chunk).split(b"\n")
            tail = pieces.pop()
            if len(tail) > MAX_RECORD_CHARS:
                self.errors.add(line + len(pieces) + 1, "row",
                                f"a line over {MAX_RECORD_CHARS} bytes; the file was read no further")
                readable = False
                tail = b""
            if line == 0 and pieces:
                pieces[0] = pieces[0].removeprefix(codecs.BOM_UTF8)
            for piece in pieces:
                line += 1
                self._json_line(line, piece)
            yield None
        if tail.strip():
            self._json_line(line + 1, tail.removeprefix(codecs.BOM_UTF8) if line == 0 else tail)
        yield None

    def _json_line(self, line: int, piece: bytes) -> None:
        if not piece.strip():
            return
        try:
            raw = orjson.loads(piece)
        except orjson.JSONDecodeError as exc:
            self.rows += 1
            self.errors.add(line, "row", f"not a JSON object: {exc}")
            return
        self._row(line, raw)

    async def _csv(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[None]:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        lines = _Lines()
        reader = csv.reader(lines)
        tail, readable = "", True
        async for chunk in chunks:
            if readable:
                try:
                    text = tail + decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line = lines.line + len(lines.pending) + tail.count("\n") + chunk[:exc.start].count(b"\n") + 1
                    self._not_utf8(line, exc)
                    readable = False
                    continue
                complete, tail = split_lines(text, final=False)
                if len(tail) > MAX_RECORD_CHARS:
                    self.errors.add(lines.line + len(lines.pending) + len(complete) + 1, "row",
                                    f"a line over {MAX_RECORD_CHARS} characters; the file was read no further")
                    readable = False
                    continue
                if not lines.pending and self._names is not None and '"' not in text:
                    readable = self._csv_unquoted(complete, lines)  # the usual case, without the feeder
                else:
                    lines.pending.extend(complete)
                    readable = self._csv_records(reader, lines)
            yield None
        if readable:
            try:
                text = tail + decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                self._not_utf8(lines.line + len(lines.pending) + 1, exc)
                return
            complete, _ = split_lines(text, final=True)
            lines.pending.extend(complete)
            lines.ended = True
            self._csv_records(reader, lines)
        yield None

    def _not_utf8(self, line: int, exc: UnicodeDecodeError) -> None:
        self.errors.add(line, "body", f"not UTF-8: {exc.reason}")

    def _csv_unquoted(self, complete: list[str], lines: _Lines) -> bool:
        """Lines without a quote, each a record: read by the csv module straight from the list."""
        base = lines.line
        try:
            for line, cells in enumerate(csv.reader(complete), start=base + 1):
                lines.line = line
                self._csv_record(line, cells)
        except csv.Error as exc:
            self.errors.add(lines.line + 1, "row", str(exc))
            return False
        lines.line = base + len(complete)
        return True

    def _csv_records(self, reader: Any, lines: _Lines) -> bool:
        """Read every complete record that has arrived; whether to go on reading."""
        while True:
            lines.taken.clear()
            try:
                cells = next(reader)
            except _NeedMore:
                if sum(map(len, lines.taken)) > MAX_RECORD_CHARS:
                    self.errors.add(lines.line, "row", f"a record over {MAX_RECORD_CHARS} characters (a quote left "
                                                       "open?); the file was read no further")
                    return False
                lines.put_back()
                return True
            except StopIteration:
                return False
            except csv.Error as exc:
                self.errors.add(lines.line, "row", str(exc))
                return False
            if self._names is None:
                if not self._header(cells):
                    return False
                continue
            self._csv_record(lines.line, cells)

    def _csv_record(self, line: int, cells: list[str]) -> None:
        names = self._names
        assert names is not None
        if not "".join(cells).strip():
            return
        if len(cells) != len(names):
            self.rows += 1
            self.errors.add(line, "row", f"{len(cells)} cells, the header has {len(names)}")
            return
        cells.append("")
        values = list(map(str.strip, self._pick(cells)))
        values[4] = values[4] or "0.00"  # an empty optional cell takes the default
        values[5] = values[5] or "capture"
        staged = _quick_values(*values)
        if staged is None:
            stripped = zip(names, map(str.strip, cells), strict=False)  # cells has one more, the ""
            self._row(line, {name: cell for name, cell in stripped if cell or name in REQUIRED})
            return
        self.rows += 1
        if not self.errors.total:
            self._batch.append((line, staged))

    def _header(self, header: list[str]) -> bool:
        names = [h.strip().lower() for h in header]
        before = self.errors.total
        for name in names:
            if name not in SETTLEMENT_FIELDS:
                self.errors.add(1, name or "header", "unknown column")
        for name in REQUIRED:
            if name not in names:
                self.errors.add(1, name, "missing column")
        if len(set(names)) != len(names):
            self.errors.add(1, "header", "a column is named twice")
        if self.errors.total > before:
            return False
        self._names = names
        # The columns in _quick_values' order; a missing optional one reads the "" appended to each row.
        self._pick = itemgetter(*(names.index(f) if f in names else len(names) for f in _CSV_ORDER))
        return True
