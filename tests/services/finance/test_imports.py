"""Settlement imports: JSON or CSV, idempotent on (provider, external_id), all or nothing per file."""

from __future__ import annotations

from tests.conftest import assert_problem
from tests.services.finance.conftest import Books, payment

HEADER = "provider,external_id,order_id,amount,fee,currency,settled_at,type\n"


async def count(books: Books) -> int:
    return await books.pool.fetchval("SELECT count(*) FROM finance.settlements")


async def test_a_json_import_is_idempotent(books: Books) -> None:
    rows = [payment("A-1", "10.00", external_id="e1"), payment("A-2", "5.50", external_id="e2", fee="0.20")]
    first = await books.settle(*rows)
    assert (first["received"], first["inserted"], first["already_imported"]) == (2, 2, 0)
    again = await books.settle(*rows, expect=200)
    assert (again["inserted"], again["already_imported"], again["batch_id"]) == (0, 2, None)
    more = await books.settle(*rows, payment("A-3", "1.00", external_id="e3"))
    assert (more["inserted"], more["already_imported"]) == (1, 2)
    assert await count(books) == 3
    assert await books.pool.fetchval("SELECT count(*) FROM finance.import_batches") == 2


async def test_a_csv_import_reads_columns_in_any_order_and_defaults_type_and_fee(books: Books) -> None:
    body = ("currency,order_id,provider,external_id,amount,settled_at\n"
            "EUR,A-1,adyen,x1,10.5,2024-05-01T10:00:00Z\n"
            "EUR,A-2,adyen,x2,3,2024-05-01 11:00:00\n")
    status, out, _ = await books.finance.post("/v1/settlements", data=body, headers={"Content-Type": "text/csv"})
    assert status == 201 and out["inserted"] == 2, out
    rows = await books.pool.fetch("SELECT amount, fee, type, settled_at FROM finance.settlements ORDER BY id")
    assert [(str(r["amount"]), str(r["fee"]), r["type"]) for r in rows] == [("10.50", "0.00", "capture"),
                                                                            ("3.00", "0.00", "capture")]
    assert rows[1]["settled_at"].isoformat() == "2024-05-01T11:00:00+00:00"  # no offset means UTC


async def test_one_bad_row_refuses_the_file_and_every_bad_row_is_reported_by_line(books: Books) -> None:
    body = (HEADER
            + "stripe,s1,A-1,10.00,0.30,EUR,2024-05-01T10:00:00Z,capture\n"
            + "stripe,s2,A-2,10.005,0.30,EUR,2024-05-01T10:00:00Z,capture\n"  # no silent rounding of cents
            + "stripe,s3,A-3,10.00,0.30,euro,2024-05-01T10:00:00Z,chargeback\n"
            + "stripe,s4,A-4,-1.00,0.30,EUR,not a time,capture\n"
            + "stripe,s5,A-5,7.00,0.30,EUR\n")
    status, out, _ = await books.finance.post("/v1/settlements", data=body, headers={"Content-Type": "text/csv"})
    assert_problem(status, out, 422, "validation-failed")
    found = {(e["line"], e["field"]) for e in out["errors"]}
    assert found == {(3, "amount"), (4, "currency"), (4, "type"), (5, "amount"), (5, "settled_at"), (6, "row")}
    assert all(e["problem"] for e in out["errors"])
    assert await count(books) == 0


async def test_json_rows_are_reported_by_position(books: Books) -> None:
    rows = [payment("A-1", "10.00"), {**payment("A-2", "1.00"), "amount": 1.5}, {"provider": "x"}]
    status, out, _ = await books.finance.post("/v1/settlements", json=rows)
    assert_problem(status, out, 422)
    assert (2, "amount") in {(e["line"], e["field"]) for e in out["errors"]}  # a JSON number is not money
    assert {e["field"] for e in out["errors"] if e["line"] == 3} >= {"external_id", "order_id", "amount"}
    assert await count(books) == 0


async def test_a_known_payment_with_other_values_is_refused_not_overwritten(books: Books) -> None:
    await books.settle(payment("A-1", "10.00", external_id="same"))
    status, out, _ = await books.finance.post("/v1/settlements", json=[
        payment("A-9", "1.00", external_id="new"), payment("A-1", "11.00", external_id="same")])
    assert_problem(status, out, 422)
    assert [(e["line"], e["field"]) for e in out["errors"]] == [(2, "external_id")]
    assert await count(books) == 1
    status, out, _ = await books.finance.post("/v1/settlements", json=[
        payment("A-1", "1.00", external_id="twice"), payment("A-1", "2.00", external_id="twice")])
    assert_problem(status, out, 422)
    assert out["errors"][0]["line"] == 2


async def test_a_csv_header_must_name_known_columns(books: Books) -> None:
    status, out, _ = await books.finance.post("/v1/settlements", data="provider,external_id,colour\nx,y,red\n",
                                              headers={"Content-Type": "text/csv"})
    assert_problem(status, out, 422)
    assert {(e["line"], e["field"]) for e in out["errors"]} >= {(1, "colour"), (1, "amount"), (1, "order_id")}
    status, out, _ = await books.finance.post("/v1/settlements", data=b"\xff\xfe",
                                              headers={"Content-Type": "text/csv"})
    assert_problem(status, out, 422)


async def test_a_big_csv_goes_in_as_one_bulk_statement(books: Books) -> None:
    body = HEADER + "".join(f"bulk,b{i},ORD-{i},{i % 100}.{i % 97:02d},0.10,EUR,2024-05-01T10:00:00Z,capture\n"
                            for i in range(8000))
    status, out, _ = await books.finance.post("/v1/settlements", data=body, headers={"Content-Type": "text/csv"})
    assert status == 201 and out["inserted"] == 8000
    assert await count(books) == 8000


async def test_an_empty_list_imports_nothing(books: Books) -> None:
    status, out, _ = await books.finance.post("/v1/settlements", json=[])
    assert status == 200 and out["received"] == 0
