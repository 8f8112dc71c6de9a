"""Stores: the tills' tenders against the declared close-out per tender (cash over/short)."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.finance.conftest import Books, items_of


async def declare(books: Books, location_id: str, day: Any, **tenders: str) -> dict[str, Any]:
    status, body, _ = await books.finance.post("/v1/closeouts", json={
        "location_id": location_id, "business_day": day.isoformat(), "currency": "EUR",
        "tenders": [{"kind": k, "amount": a} for k, a in tenders.items()]})
    assert status == 201, body
    return body


def tender(run: dict[str, Any], location_id: str, kind: str) -> dict[str, Any]:
    [found] = [i for i in run["items"] if i["kind"] == "tender" and i["location_id"] == location_id
               and i["tender"] == kind]
    return found


async def test_cash_short_and_over_are_mismatches_and_the_till_orders_are_paid(books: Books) -> None:
    day = await books.day_of("store-a")
    await books.till("store-a", {"TEE": 2}, [("cash", "20.00"), ("card", "19.80")])
    await books.till("store-a", {"CAP": 1}, [("cash", "9.50")])
    await declare(books, "store-a", day, cash="29.00", card="19.80")
    run = await books.run(day, location_id="store-a")
    cash = tender(run, "store-a", "cash")
    assert (cash["class"], cash["expected"], cash["paid"], cash["note"]) == ("amount_mismatch", "29.50", "29.00",
                                                                              "short by 0.50")
    assert tender(run, "store-a", "card")["class"] == "matched"
    assert [i["note"] for i in items_of(run)] == ["paid at the till", "paid at the till"]
    await declare(books, "store-a", day, cash="30.00", card="19.80")  # declared again: the latest counts
    run = await books.run(day, location_id="store-a")
    assert tender(run, "store-a", "cash")["note"] == "over by 0.50"
    assert run["counts"]["amount_mismatch"] == 1


async def test_a_store_that_declares_nothing_is_missing_its_tenders(books: Books) -> None:
    day = await books.day_of("store-a")
    await books.till("store-a", {"TEE": 1}, [("card", "19.90")])
    run = await books.run(day, channel="store")
    assert tender(run, "store-a", "card")["class"] == "missing_payment"


async def test_a_declared_tender_the_tills_never_took_is_missing_its_sale(books: Books) -> None:
    day = await books.day_of("store-a")
    await books.till("store-a", {"TEE": 1}, [("card", "19.90")])
    await declare(books, "store-a", day, card="19.90", voucher="5.00")
    run = await books.run(day, location_id="store-a")
    assert tender(run, "store-a", "voucher")["class"] == "missing_sale"
    assert tender(run, "store-a", "card")["class"] == "matched"


async def test_a_till_return_is_refunded_in_the_sale_first_tender(books: Books) -> None:
    day = await books.day_of("store-a")
    sale = await books.till("store-a", {"TEE": 2}, [("cash", "39.80")])
    await books.give_back(sale["id"], {"TEE": 1}, location_id="store-a")
    await declare(books, "store-a", day, cash="19.90")
    run = await books.run(day, location_id="store-a")
    assert tender(run, "store-a", "cash")["class"] == "matched"
    [order] = items_of(run)
    assert (order["class"], order["sales_total"]) == ("matched", "19.90")


async def test_closeouts_are_checked_and_listed(books: Books) -> None:
    day = await books.day_of("store-a")
    status, body, _ = await books.finance.post("/v1/closeouts", json={
        "location_id": "nowhere", "business_day": day.isoformat(), "currency": "EUR",
        "tenders": [{"kind": "cash", "amount": "1.00"}]})
    assert_problem(status, body, 422, field="location_id")
    status, body, _ = await books.finance.post("/v1/closeouts", json={
        "location_id": "store-a", "business_day": day.isoformat(), "currency": "EUR",
        "tenders": [{"kind": "cash", "amount": "1.00"}, {"kind": "cash", "amount": "2.00"}]})
    assert_problem(status, body, 422)
    await declare(books, "store-a", day, cash="1.00")
    await declare(books, "store-a", day, cash="2.00")
    status, body, _ = await books.finance.get("/v1/closeouts", params={"business_day": day.isoformat()})
    assert status == 200 and [c["tenders"] for c in body["items"]] == [[{"kind": "cash", "amount": "2.00"}]]
