"""Finance lists the sales lines sold at a price other than the catalogue's: who set it and why."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_problem
from tests.services.finance.conftest import LONDON, Books


async def overridden_till_sale(books: Books) -> dict[str, Any]:
    body = {"location_id": "store-a", "currency": "EUR",
            "lines": [{"sku": "TEE", "qty": 2, "unit_price": "15.00", "price_override": {"reason": "damaged"}},
                      {"sku": "CAP", "qty": 1}],
            "tenders": [{"kind": "cash", "amount": "39.50"}]}
    status, sale, _ = await books.orders.post("/v1/pos/sales", json=body, idem="till-override")
    assert status == 201, sale
    return sale


async def promo_order(books: Books) -> dict[str, Any]:
    body = {"channel": "online", "currency": "EUR", "lines": [{"sku": "JEANS", "qty": 1, "unit_price": "59.00"}],
            "fulfillment": {"type": "ship", "location_id": "wh-1", "ship_to": LONDON}}
    status, order, _ = await books.orders.post("/v1/orders", json=body, idem="promo")
    assert status == 201, order
    status, order, _ = await books.orders.post(f"/v1/orders/{order['id']}/fulfill")
    assert status == 200, order
    return order


async def report(books: Books, api: Any = None, **params: Any) -> tuple[int, Any]:
    day = await books.day_of("store-a")
    status, body, _ = await (api or books.finance).get("/v1/reports/price-overrides",
                                                       params={"from": str(day), "to": str(day), **params})
    return status, body


async def test_overridden_lines_are_listed_with_catalogue_and_sold_price_reason_and_who(books: Books) -> None:
    sale = await overridden_till_sale(books)
    await books.till("store-a", {"SOCKS": 1}, [("cash", "3.33")])  # at the catalogue price: not listed
    await promo_order(books)
    await books.give_back(sale["id"], {"TEE": 1}, location_id="store-a")
    status, body = await report(books)
    assert status == 200, body
    rows = [(r["kind"], r["order_id"], r["location_id"], r["sku"], r["qty"], r["catalogue_price"], r["unit_price"],
             r["difference"], r["price_source"], r["reason"]) for r in body["items"]]
    assert rows == [
        ("till", sale["id"], "store-a", "TEE", 2, "19.90", "15.00", "-9.80", "override", "damaged"),
        ("return", sale["id"], "store-a", "TEE", -1, "19.90", "15.00", "4.90", "override", "damaged"),
    ]
    assert all(r["set_by"].startswith("admin:") for r in body["items"])
    assert body["items"][0]["business_day"] == str(await books.day_of("store-a"))
    status, body = await report(books, include_channel="true")
    assert [(r["sku"], r["price_source"], r["catalogue_price"], r["unit_price"]) for r in body["items"]
            if r["price_source"] == "channel"] == [("JEANS", "channel", "79.00", "59.00")]
    status, body = await report(books, location_id="wh-1")
    assert body["items"] == []


async def test_the_report_pages_with_an_opaque_cursor(books: Books) -> None:
    await overridden_till_sale(books)
    await promo_order(books)
    status, first = await report(books, include_channel="true", limit=1)
    assert status == 200 and len(first["items"]) == 1 and first["next_cursor"]
    status, second = await report(books, include_channel="true", limit=1, cursor=first["next_cursor"])
    assert [r["sku"] for r in first["items"] + second["items"]] == ["TEE", "JEANS"]
    status, body = await report(books, cursor="not-a-cursor")
    assert_problem(status, body, 422, field="cursor")
    status, body = await report(books, to="2000-01-01")
    assert_problem(status, body, 422)


@pytest.mark.parametrize(("role", "allowed"), [("finance", True), ("auditor", True), ("admin", False),
                                               ("ops", False), ("store", False), ("shop", False)])
async def test_finance_and_auditors_read_the_report(books: Books, make_key: Any, role: str, allowed: bool) -> None:
    api = books.finance.as_key(await make_key(role, "store-a" if role == "store" else None))
    status, body = await report(books, api=api)
    if allowed:
        assert status == 200, body
    else:
        assert_problem(status, body, 403, "forbidden")
