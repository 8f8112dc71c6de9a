"""Revenue by day, channel and location, returns netted, with order count and average order value."""

from __future__ import annotations

from tests.conftest import assert_problem
from tests.services.finance.conftest import Books


async def test_revenue_by_channel_and_location_nets_returns(books: Books) -> None:
    day = await books.day_of("wh-1")
    one = await books.sell_online({"TEE": 2})  # 39.80
    await books.sell_online({"JEANS": 1}, charges=[{"kind": "shipping", "amount": "5.00"}])  # 84.00
    await books.give_back(one["id"], {"TEE": 1})  # -19.90
    await books.till("store-a", {"CAP": 1}, [("cash", "9.50")])
    store_day = await books.day_of("store-a")
    params = {"from": min(day, store_day).isoformat(), "to": max(day, store_day).isoformat()}
    status, report, _ = await books.finance.get("/v1/reports/revenue", params={**params, "group_by": "channel"})
    assert status == 200, report
    assert report["rows"] == [
        {"key": "online", "currency": "EUR", "orders": 2, "gross": "123.80", "returns": "-19.90", "revenue": "103.90",
         "average_order_value": "61.90"},
        {"key": "store", "currency": "EUR", "orders": 1, "gross": "9.50", "returns": "0.00", "revenue": "9.50",
         "average_order_value": "9.50"},
    ]
    status, report, _ = await books.finance.get("/v1/reports/revenue", params={**params, "group_by": "location"})
    assert [(r["key"], r["revenue"]) for r in report["rows"]] == [("store-a", "9.50"), ("wh-1", "103.90")]
    status, report, _ = await books.finance.get("/v1/reports/revenue", params=params)
    assert report["group_by"] == "day" and report["from"] == params["from"]
    assert sum(r["orders"] for r in report["rows"]) == 3


async def test_average_order_value_rounds_half_even_to_the_cent(books: Books) -> None:
    day = await books.day_of("wh-1")
    for lines in ({"SOCKS": 1}, {"SOCKS": 1}, {"TEE": 1}):  # (3.33 + 3.33 + 19.90) / 3 = 8.8533...
        await books.sell_online(lines)
    status, report, _ = await books.finance.get("/v1/reports/revenue", params={"from": str(day), "to": str(day)})
    assert report["rows"][0]["average_order_value"] == "8.85"


async def test_the_report_exports_as_csv(books: Books) -> None:
    day = await books.day_of("wh-1")
    await books.sell_online({"TEE": 1})
    status, text, resp = await books.finance.get("/v1/reports/revenue.csv",
                                                 params={"from": str(day), "to": str(day), "group_by": "location"})
    assert status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert text.splitlines() == ["location,currency,orders,gross,returns,revenue,average_order_value",
                                 "wh-1,EUR,1,19.90,0.00,19.90,19.90"]


async def test_a_bad_range_is_422(books: Books) -> None:
    status, body, _ = await books.finance.get("/v1/reports/revenue", params={"from": "2024-05-02", "to": "2024-05-01"})
    assert_problem(status, body, 422)
    status, body, _ = await books.finance.get("/v1/reports/revenue", params={"from": "2024-5-1", "to": "2024-05-01"})
    assert_problem(status, body, 422)
    status, body, _ = await books.finance.get("/v1/reports/revenue", params={"from": "2024-05-01", "to": "2024-05-01",
                                                                             "group_by": "sku"})
    assert_problem(status, body, 422)
