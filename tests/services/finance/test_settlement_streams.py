"""Settlement files of real size: CSV and JSON lines stream into the import as they arrive, under a body
limit of their own, all or nothing; every other body keeps the 1 MiB default."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

from tests.conftest import Api, ServiceFactory, assert_problem
from tests.services.finance.conftest import Books
from tests.wire import LAST_CHUNK, Wire, chunk, head

HEADER = b"provider,external_id,order_id,amount,fee,currency,settled_at,type\n"
ROWS = 25_000  # ~1.9 MB of CSV: past the 1 MiB every other body is held to


def amount_of(i: int) -> str:
    return "999999999999.99" if i == 777 else f"{i}.{i % 100:02d}"


def csv_row(i: int, amount: str | None = None, currency: str = "EUR") -> bytes:
    return (f"stream,s{i},ORD-{i},{amount or amount_of(i)},0.10,{currency},2024-05-01T10:00:00+02:00,capture\n"
            .encode())


def settlement_csv(rows: int, **bad: tuple[str, str]) -> bytes:
    """`bad` maps a row number (as "r<n>") to (amount, currency) for that row."""
    out = [HEADER]
    for i in range(1, rows + 1):
        amount, currency = bad.get(f"r{i}", (None, "EUR"))
        out.append(csv_row(i, amount, currency))
    return b"".join(out)


def settlement_jsonl(rows: int) -> bytes:
    return b"".join(orjson.dumps({"provider": "stream", "external_id": f"s{i}", "order_id": f"ORD-{i}",
                                  "amount": amount_of(i), "fee": "0.10", "currency": "EUR",
                                  "settled_at": "2024-05-01T08:00:00Z"}) + b"\n" for i in range(1, rows + 1))


async def pieces(body: bytes, seed: int = 7, most: int = 4096) -> AsyncIterator[bytes]:
    """The body in chunks of 1..`most` bytes, each written on its own (aiohttp sends them chunked)."""
    rng, at = random.Random(seed), 0
    while at < len(body):
        size = rng.randint(1, most)
        yield body[at:at + size]
        at += size
        await asyncio.sleep(0)


async def stream(api: Api, body: bytes, content_type: str, **kw: Any) -> tuple[int, Any, Any]:
    return await api.post("/v1/settlements", data=pieces(body), headers={"Content-Type": content_type}, **kw)


async def stored(books: Books) -> dict[str, tuple[Decimal, str]]:
    rows = await books.pool.fetch("SELECT external_id, amount, settled_at FROM finance.settlements")
    return {r["external_id"]: (r["amount"], r["settled_at"].isoformat()) for r in rows}


async def nothing_imported(books: Books) -> None:
    assert await books.pool.fetchval("SELECT count(*) FROM finance.settlements") == 0
    assert await books.pool.fetchval("SELECT count(*) FROM finance.import_batches") == 0


def expected(rows: int) -> dict[str, tuple[Decimal, str]]:
    return {f"s{i}": (Decimal(amount_of(i)), "2024-05-01T08:00:00+00:00") for i in range(1, rows + 1)}


async def finance_with(service: ServiceFactory, make_key: Any, **overrides: Any) -> Api:
    return (await service("finance", **overrides)).as_key(await make_key("finance"))


async def declared(api: Api, path: str, length: int, content_type: str) -> tuple[int, Any]:
    """The answer to a request head declaring a body of `length` bytes (sent no further)."""
    wire = await Wire.open(api)
    try:
        await wire.send(head("POST", path, api, {"Content-Type": content_type}, length=length))
        answer = await wire.answer()
    finally:
        wire.close()
    return answer.status, answer.json()


async def test_a_csv_streamed_in_thousands_of_small_chunks_imports_every_row_exactly(books: Books) -> None:
    body = settlement_csv(ROWS)
    assert len(body) > 1_048_576
    status, out, _ = await stream(books.finance, body, "text/csv")
    assert status == 201, out
    assert (out["received"], out["inserted"], out["already_imported"]) == (ROWS, ROWS, 0)
    assert await stored(books) == expected(ROWS)


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl"])
async def test_json_lines_streamed_in_small_chunks_import_every_row_exactly(books: Books, content_type: str) -> None:
    body = settlement_jsonl(ROWS)
    status, out, _ = await stream(books.finance, body, content_type)
    assert status == 201, out
    assert out["inserted"] == ROWS
    assert await stored(books) == expected(ROWS)
    again = await stream(books.finance, body, content_type)  # the same file again: nothing new, nothing changed
    assert again[0] == 200 and (again[1]["inserted"], again[1]["already_imported"]) == (0, ROWS)
    assert await books.pool.fetchval("SELECT count(*) FROM finance.import_batches") == 1


async def test_bad_rows_in_the_middle_of_a_big_file_refuse_it_all_and_each_is_reported(books: Books) -> None:
    body = settlement_csv(ROWS, r12345=("12.345", "EUR"), r20001=("1.00", "euro"), r24000=("-3.00", "EUR"))
    status, out, _ = await stream(books.finance, body, "text/csv")
    assert_problem(status, out, 422, "validation-failed")
    # CSV lines count the header: row n is line n + 1. Rows after the first bad one are still checked.
    assert [(e["line"], e["field"]) for e in out["errors"]] == [(12346, "amount"), (20002, "currency"),
                                                                (24001, "amount")]
    assert "nothing was imported" in out["detail"]
    await nothing_imported(books)


async def test_a_key_repeated_in_one_file_goes_in_once_or_is_refused_if_its_values_differ(books: Books) -> None:
    twice = HEADER + csv_row(1) + csv_row(2) + csv_row(1)
    status, out, _ = await stream(books.finance, twice, "text/csv")
    assert status == 201 and (out["received"], out["inserted"], out["already_imported"]) == (2, 2, 0), out
    other = HEADER + csv_row(3) + csv_row(4) + csv_row(3, amount="9.99")
    status, out, _ = await stream(books.finance, other, "text/csv")
    assert_problem(status, out, 422)
    assert out["errors"] == [{"line": 4, "field": "external_id",
                              "problem": "repeats line 2 (stream, s3) with different values"}]
    assert set(await stored(books)) == {"s1", "s2"}


async def test_a_streamed_file_over_the_routes_limit_is_413_and_nothing_is_imported(
        books: Books, service: ServiceFactory, make_key: Any) -> None:
    finance = await finance_with(service, make_key, settlement_max_body_bytes=300_000)
    body = settlement_csv(ROWS)  # the good rows before the limit are staged already, then rolled back
    wire = await Wire.open(finance)
    try:
        await wire.send(head("POST", "/v1/settlements", finance, {"Content-Type": "text/csv"}, chunked=True))
        await wire.send_while_open(*(chunk(body[i:i + 16384]) for i in range(0, len(body), 16384)), LAST_CHUNK)
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 413, "payload-too-large")
    assert "300000" in answer.json()["detail"]
    await nothing_imported(books)
    status, out = await declared(finance, "/v1/settlements", len(body), "text/csv")
    assert_problem(status, out, 413, "payload-too-large")  # a Content-Length past it: refused unread
    assert "declared" in out["detail"]
    await nothing_imported(books)


async def test_the_default_limit_still_holds_every_other_body(books: Books) -> None:
    too_big = 1_048_577
    for api, path, content_type in ((books.finance, "/v1/settlements", "application/json"),  # a JSON list is held whole
                                    (books.finance, "/v1/closeouts", "application/json"),
                                    (books.finance, "/v1/reconciliations", "text/csv"),
                                    (books.orders, "/v1/orders", "application/json")):
        status, out = await declared(api, path, too_big, content_type)
        assert_problem(status, out, 413, "payload-too-large")
    rows = [{"provider": "p", "external_id": f"x{i}", "order_id": f"ORD-{i}", "amount": "1.00", "currency": "EUR",
             "settled_at": "2024-05-01T10:00:00Z"} for i in range(11_000)]
    body = orjson.dumps(rows)
    assert len(body) > too_big
    wire = await Wire.open(books.finance)  # a chunked JSON list passing the limit as it comes
    try:
        await wire.send(head("POST", "/v1/settlements", books.finance, {"Content-Type": "application/json"},
                             chunked=True))
        await wire.send_while_open(*(chunk(body[i:i + 65536]) for i in range(0, len(body), 65536)), LAST_CHUNK)
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 413, "payload-too-large")
    await nothing_imported(books)


async def _finance_idle(books: Books) -> None:
    """Wait until no finance connection is inside a transaction (the cut-off import has rolled back)."""
    for _ in range(200):
        busy = await books.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'omnistock-finance'"
            " AND state <> 'idle'")
        if busy == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cut-off import's transaction is still open")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_cut_short_imports_nothing(books: Books, framing: str) -> None:
    body = settlement_csv(ROWS)
    sent = body[:len(body) // 2]
    wire = await Wire.open(books.finance)
    try:
        if framing == "chunked":
            await wire.send(head("POST", "/v1/settlements", books.finance, {"Content-Type": "text/csv"},
                                 chunked=True), *(chunk(sent[i:i + 8192]) for i in range(0, len(sent), 8192)),
                            pause_s=0)
        else:
            await wire.send(head("POST", "/v1/settlements", books.finance, {"Content-Type": "text/csv"},
                                 length=len(body)), sent)
        await asyncio.sleep(0.3)  # the server is mid-COPY when the client goes
    finally:
        wire.close()
    await asyncio.sleep(0.3)
    await _finance_idle(books)
    await nothing_imported(books)
    status, out, _ = await stream(books.finance, HEADER + csv_row(1), "text/csv")  # the service goes on
    assert status == 201 and out["inserted"] == 1


async def test_a_body_that_stops_coming_is_408_and_nothing_is_imported(
        books: Books, service: ServiceFactory, make_key: Any) -> None:
    finance = await finance_with(service, make_key, settlement_body_timeout_s=1.0)
    body = settlement_csv(2000)
    wire = await Wire.open(finance)
    try:
        await wire.send(head("POST", "/v1/settlements", finance, {"Content-Type": "text/csv"}, chunked=True),
                        chunk(body[:50_000]))
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 408, "request-timeout")
    await nothing_imported(books)


async def test_an_idempotency_key_on_a_streamed_file_replays_its_first_answer(books: Books) -> None:
    body = settlement_csv(3000)
    first = await stream(books.finance, body, "text/csv", idem="day-1")
    assert first[0] == 201, first[1]
    again = await stream(books.finance, body, "text/csv", idem="day-1")
    assert again[0] == 201 and again[1] == first[1]  # the first answer, not "nothing new"
    assert again[2].headers.get("Idempotent-Replayed") == "true"
    other = await stream(books.finance, settlement_csv(3001), "text/csv", idem="day-1")
    assert_problem(other[0], other[1], 409)
    assert await books.pool.fetchval("SELECT count(*) FROM finance.settlements") == 3000
    as_lines = await stream(books.finance, settlement_jsonl(3000), "application/x-ndjson", idem="day-1")
    assert_problem(as_lines[0], as_lines[1], 409)  # another body under the same key


async def test_backslashes_and_offsets_are_stored_as_the_file_says(books: Books) -> None:
    body = (HEADER + b"stream,c:\\new\\table\\,ORD-1,1.00,0,EUR,2024-05-01T23:30:00-05:00,capture\n"
            + b"stream,\\N,ORD-2,2.00,0,EUR,2024-05-01 10:00:00,refund\n"
            + b"stream,s3,ORD-3,3.00,0,EUR,2024-05-01T10:00:00.000001+15:30,capture\n")
    status, out, _ = await stream(books.finance, body, "text/csv")
    assert status == 201, out
    rows = await books.pool.fetch("SELECT external_id, settled_at, type FROM finance.settlements ORDER BY id")
    assert [(r["external_id"], r["settled_at"].isoformat(), r["type"]) for r in rows] == [
        ("c:\\new\\table\\", "2024-05-02T04:30:00+00:00", "capture"),
        ("\\N", "2024-05-01T10:00:00+00:00", "refund"),  # not COPY's NULL; no offset means UTC
        ("s3", "2024-04-30T18:30:00.000001+00:00", "capture")]  # +15:30, PostgreSQL's widest offset
