"""Settlement files reach the import whole however they are sent: every row, every amount to the cent.
A CSV cut at its first write once went in as 1,000 rows with row 1,000's amount read as `1000.00`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from tests.conftest import ServiceFactory, assert_problem
from tests.services.finance.conftest import Books, payment
from tests.wire import LAST_CHUNK, Wire, chunk, exchange, head

HEADER = b"provider,external_id,order_id,amount,fee,currency,settled_at,type\n"
CSV = {"Content-Type": "text/csv"}
BIG = "100000000000.00"


def amount_of(i: int) -> str:
    return BIG if i == 1000 else f"{i}.{i % 100:02d}"


def settlement_csv(rows: int) -> bytes:
    return HEADER + b"".join(f"wire,w{i},ORD-{i},{amount_of(i)},0.10,EUR,2024-05-01T10:00:00Z,capture\n".encode()
                             for i in range(1, rows + 1))


async def stored_amounts(books: Books) -> dict[str, Decimal]:
    rows = await books.pool.fetch("SELECT external_id, amount FROM finance.settlements")
    return {r["external_id"]: r["amount"] for r in rows}


async def test_a_5000_row_csv_split_mid_number_imports_every_row_exactly(books: Books) -> None:
    body = settlement_csv(5000)
    cut = body.index(BIG.encode()) + 4  # the first write ends inside row 1,000's amount: "1000|00000000.00"
    answer = await exchange(books.finance, "POST", "/v1/settlements", body, body[:cut], body[cut:],
                            headers=CSV, pause_s=0.3)
    assert answer.status == 201, answer.body[:500]
    assert answer.json()["inserted"] == 5000
    stored = await stored_amounts(books)
    assert stored == {f"w{i}": Decimal(amount_of(i)) for i in range(1, 5001)}
    assert stored["w1000"] == Decimal(BIG)


async def test_a_chunked_csv_in_many_pieces_imports_every_row(books: Books) -> None:
    body = settlement_csv(1200)
    pieces = [chunk(body[i:i + 7001]) for i in range(0, len(body), 7001)]
    wire = await Wire.open(books.finance)
    try:
        await wire.send(head("POST", "/v1/settlements", books.finance, CSV, chunked=True), *pieces, LAST_CHUNK,
                        pause_s=0.01)
        answer = await wire.answer()
    finally:
        wire.close()
    assert answer.status == 201, answer.body[:500]
    assert await stored_amounts(books) == {f"w{i}": Decimal(amount_of(i)) for i in range(1, 1201)}


async def test_a_700_kb_json_list_in_three_writes_imports_every_row(books: Books) -> None:
    rows = [payment(f"ORD-{i}", amount_of(i), external_id=f"j{i}", provider="wire") for i in range(1, 4101)]
    body = orjson.dumps(rows)
    assert len(body) > 700_000
    third = len(body) // 3
    answer = await exchange(books.finance, "POST", "/v1/settlements", body, body[:third], body[third:2 * third],
                            body[2 * third:], headers={"Content-Type": "application/json"}, pause_s=0.2)
    assert answer.status == 201, answer.body[:500]
    assert await stored_amounts(books) == {f"j{i}": Decimal(amount_of(i)) for i in range(1, 4101)}


async def test_an_over_limit_chunked_csv_is_413_and_nothing_is_imported(books: Books, service: ServiceFactory,
                                                                        make_key: Any) -> None:
    # A settlement file has a limit of its own (OMNISTOCK_SETTLEMENT_MAX_BODY_BYTES), set to 1 MiB here.
    finance = (await service("finance", settlement_max_body_bytes=1_048_576)).as_key(await make_key("finance"))
    body = settlement_csv(20_000)  # ~1.4 MB
    wire = await Wire.open(finance)
    try:
        await wire.send(head("POST", "/v1/settlements", finance, CSV, chunked=True))
        await wire.send_while_open(*(chunk(body[i:i + 65536]) for i in range(0, len(body), 65536)), LAST_CHUNK)
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 413, "payload-too-large")
    assert await stored_amounts(books) == {}
