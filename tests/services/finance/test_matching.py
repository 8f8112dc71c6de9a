"""Every class of item, split payments, refunds against returns, cent rounding, tolerance."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from services.finance import use_cases
from services.finance.domain import Tolerances
from services.finance.schemas import RunIn
from tests.services.finance.conftest import Books, items_of, only_item, payment


async def test_a_paid_order_matches_and_an_unpaid_one_is_missing_its_payment(books: Books) -> None:
    paid = await books.sell_online({"TEE": 2}, charges=[{"kind": "shipping", "amount": "4.95"}])
    unpaid = await books.sell_online({"CAP": 1})
    assert paid["total"] == "44.75"
    await books.settle(payment(paid["id"], "44.75"))
    run = await books.run(await books.day_of("wh-1"))
    assert run["counts"] == {"matched": 1, "amount_mismatch": 0, "missing_payment": 1, "missing_sale": 0,
                             "duplicate": 0}
    assert run["status"] == "open" and run["unresolved"] == 1
    item = only_item(run, paid["id"])
    assert (item["class"], item["expected"], item["paid"], item["sales_total"]) == ("matched", "44.75", "44.75",
                                                                                     "44.75")
    missing = only_item(run, unpaid["id"])
    assert (missing["class"], missing["expected"], missing["paid"], missing["difference"]) == (
        "missing_payment", "9.50", "0.00", "-9.50")
    assert run["items"][0]["class"] != "matched"  # exceptions first


async def test_split_payments_match_when_the_parts_sum_to_the_total(books: Books) -> None:
    order = await books.sell_online({"JEANS": 1, "TEE": 1})  # 98.90
    await books.settle(payment(order["id"], "50.00", provider="voucher"), payment(order["id"], "24.45"),
                       payment(order["id"], "24.45"))
    run = await books.run(await books.day_of("wh-1"))
    item = only_item(run, order["id"])
    assert item["class"] == "matched" and len(item["settlement_ids"]) == 3


async def test_a_repeated_capture_is_a_duplicate_and_another_difference_a_mismatch(books: Books) -> None:
    duplicated = await books.sell_online({"TEE": 1})
    short = await books.sell_online({"JEANS": 1})
    over = await books.sell_online({"CAP": 2})
    await books.settle(payment(duplicated["id"], "19.90"), payment(duplicated["id"], "19.90"),
                       payment(short["id"], "78.00"), payment(over["id"], "19.01"))
    run = await books.run(await books.day_of("wh-1"))
    assert only_item(run, duplicated["id"])["class"] == "duplicate"
    assert only_item(run, duplicated["id"])["difference"] == "19.90"
    assert (only_item(run, short["id"])["class"], only_item(run, short["id"])["difference"]) == (
        "amount_mismatch", "-1.00")
    assert only_item(run, over["id"])["class"] == "amount_mismatch"


async def test_a_split_payment_whose_parts_happen_to_be_equal_is_not_a_duplicate(books: Books) -> None:
    order = await books.sell_online({"JEANS": 2})  # 158.00 in two equal instalments
    await books.settle(payment(order["id"], "79.00"), payment(order["id"], "79.00"))
    run = await books.run(await books.day_of("wh-1"))
    assert only_item(run, order["id"])["class"] == "matched"


async def test_a_payment_with_no_sale_is_missing_its_sale(books: Books) -> None:
    day = await books.day_of("wh-1")
    noon = datetime.combine(day, datetime.min.time(), UTC).replace(hour=12)  # a payment's day is its UTC date
    await books.settle(payment("shop-order-that-never-was", "12.00", settled_at=noon))
    placed_not_shipped = await books.orders.post("/v1/orders", idem="nf", json={
        "channel": "online", "currency": "EUR", "lines": [{"sku": "TEE", "qty": 1, "unit_price": "19.90"}],
        "fulfillment": {"type": "ship", "location_id": "wh-1"}})
    await books.settle(payment(placed_not_shipped[1]["id"], "19.90", settled_at=noon))
    run = await books.run(day)
    strays = items_of(run, "missing_sale", kind="settlement")
    assert sorted(i["order_ref"] for i in strays) == sorted(["shop-order-that-never-was",
                                                             placed_not_shipped[1]["id"]])
    assert {i["paid"] for i in strays} == {"12.00", "19.90"}


async def test_refunds_net_against_returns(books: Books) -> None:
    order = await books.sell_online({"TEE": 2, "CAP": 1})  # 49.30
    await books.give_back(order["id"], {"CAP": 1})  # -9.50, the same day
    netted = await books.sell_online({"JEANS": 1})
    await books.give_back(netted["id"], {"JEANS": 1})
    unrefunded = await books.sell_online({"TEE": 1})
    await books.give_back(unrefunded["id"], {"TEE": 1})
    await books.settle(payment(order["id"], "49.30"), payment(order["id"], "9.50", kind="refund"),
                       payment(netted["id"], "79.00"), payment(netted["id"], "79.00", kind="refund"),
                       payment(unrefunded["id"], "19.90"))
    run = await books.run(await books.day_of("wh-1"))
    item = only_item(run, order["id"])
    assert (item["class"], item["sales_total"], item["expected"], item["paid"]) == ("matched", "39.80", "39.80",
                                                                                     "39.80")
    assert only_item(run, netted["id"])["class"] == "matched"
    assert only_item(run, unrefunded["id"])["class"] == "amount_mismatch"
    assert only_item(run, unrefunded["id"])["note"] == "return not refunded"


async def test_cents_must_add_up_exactly_unless_a_tolerance_is_set(books: Books) -> None:
    order = await books.sell_online({"SOCKS": 3})  # 9.99, paid in three parts
    thirds = await books.sell_online({"JEANS": 1, "SOCKS": 1})  # 82.33 = 27.44 + 27.44 + 27.45
    await books.settle(payment(order["id"], "3.33"), payment(order["id"], "3.33"), payment(order["id"], "3.34"),
                       payment(thirds["id"], "27.44"), payment(thirds["id"], "27.44"), payment(thirds["id"], "27.45"))
    run = await books.run(await books.day_of("wh-1"))
    assert only_item(run, order["id"])["difference"] == "0.01"
    assert only_item(run, order["id"])["class"] == "amount_mismatch"
    assert only_item(run, thirds["id"])["class"] == "matched"
    tolerant = await use_cases.run_reconciliation(books.pool, RunIn(business_day=await books.day_of("wh-1")),
                                                  "test", Tolerances(amount=Decimal("0.01")))
    assert tolerant.counts.matched == 2 and tolerant.amount_tolerance == Decimal("0.01")
    assert tolerant.supersedes == run["id"]


async def test_a_settlement_in_another_currency_is_a_mismatch(books: Books) -> None:
    order = await books.sell_online({"CAP": 1})
    await books.settle(payment(order["id"], "9.50", currency="USD"))
    item = only_item(await books.run(await books.day_of("wh-1")), order["id"])
    assert item["class"] == "amount_mismatch" and "USD" in item["note"]


async def test_settlements_name_the_order_by_our_id_or_the_channel_external_id(books: Books) -> None:
    order = await books.sell_online({"TEE": 1}, external_id="SHOP-1001")
    await books.settle(payment("SHOP-1001", "19.90"))
    item = only_item(await books.run(await books.day_of("wh-1")), order["id"])
    assert item["class"] == "matched"


async def test_a_settlement_that_arrives_before_its_order_is_matched_at_the_next_run(books: Books) -> None:
    await books.settle(payment("SHOP-EARLY", "9.50"))
    order = await books.sell_online({"CAP": 1}, external_id="SHOP-EARLY")
    item = only_item(await books.run(await books.day_of("wh-1")), order["id"])
    assert item["class"] == "matched"
