from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop


def sale(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "location_id": "store-ny", "currency": "EUR",
        "lines": [{"sku": "TEE-M", "qty": 2, "unit_price": "19.90"}, {"sku": "CAP", "qty": 1, "unit_price": "9.50"}],
        "tenders": [{"kind": "card", "amount": "40.00"}, {"kind": "cash", "amount": "9.30"}],
    }
    body.update(changes)
    return body


async def test_till_sale_takes_stock_at_once_and_records_the_sale_on_the_local_day(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-ny", 3)
    await shop.receive("CAP", "store-ny", 1)
    status, body, _ = await shop.orders.post("/v1/pos/sales", json=sale(), idem="t1")
    assert status == 201, body
    assert body["total"] == "49.30" and body["status"] == "fulfilled"
    assert await shop.level("TEE-M", "store-ny") == (1, 0) and await shop.level("CAP", "store-ny") == (0, 0)
    row = await shop.pool.fetchrow("SELECT * FROM orders.sales")
    assert (row["kind"], row["channel"], row["location_id"], str(row["total"])) == ("till", "store", "store-ny",
                                                                                   "49.30")
    assert row["business_day"] == await shop.pool.fetchval("SELECT (now() AT TIME ZONE 'America/New_York')::date")
    assert str(body["business_day"]) == str(row["business_day"])
    assert [t["kind"] for t in row["tenders"]] == ["card", "cash"]
    # a till sale is an order: it can be read, and returned at the till
    status, order, _ = await shop.orders.get(f"/v1/orders/{body['id']}")
    assert status == 200 and order["fulfillment"]["type"] == "till" and order["paid_at"]
    status, out, _ = await shop.orders.post(f"/v1/orders/{body['id']}/returns", idem="r",
                                            json={"lines": [{"sku": "CAP", "qty": 1}], "location_id": "store-ny"})
    assert status == 201 and out["sale"]["total"] == "-9.50"
    again = await shop.orders.post("/v1/pos/sales", json=sale(), idem="t1")
    assert again[0] == 201 and again[1] == body
    await shop.consistent()


async def test_tenders_must_sum_to_the_total(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-ny", 3)
    await shop.receive("CAP", "store-ny", 3)
    status, body, _ = await shop.orders.post("/v1/pos/sales", idem="t",
                                             json=sale(tenders=[{"kind": "cash", "amount": "49.29"}]))
    assert_problem(status, body, 422, field="tenders")
    status, body, _ = await shop.orders.post("/v1/pos/sales", idem="t2", json=sale(
        charges=[{"kind": "discount", "amount": "9.30"}], tenders=[{"kind": "cash", "amount": "40"}]))
    assert status == 201 and body["total"] == "40.00"
    assert await shop.level("TEE-M", "store-ny") == (1, 0)


async def test_too_little_stock_is_409_and_sells_nothing(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-ny", 5)
    await shop.receive("CAP", "store-ny", 1)
    # one cap is reserved for a pick-up order: the till cannot sell it
    status, _, _ = await shop.place("pick", lines=[{"sku": "CAP", "qty": 1, "unit_price": "9.50"}],
                                    fulfillment={"type": "pickup", "location_id": "store-ny"})
    assert status == 201
    status, body, _ = await shop.orders.post("/v1/pos/sales", json=sale(), idem="t")
    assert_problem(status, body, 409, "insufficient-stock")
    assert body["skus"] == ["CAP"]
    assert await shop.level("TEE-M", "store-ny") == (5, 0)
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.sales") == 0
    await shop.consistent()


async def test_a_store_key_sells_only_at_its_own_location(shop: Shop, make_key) -> None:  # type: ignore[no-untyped-def]
    await shop.receive("TEE-M", "store-ny", 5)
    await shop.receive("CAP", "store-ny", 5)
    own = shop.orders.as_key(await make_key("store", "store-ny"))
    other = shop.orders.as_key(await make_key("store", "store-a"))
    status, body, _ = await other.post("/v1/pos/sales", json=sale(), idem="t")
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await own.post("/v1/pos/sales", json=sale(), idem="t")
    assert status == 201, body
    for role in ("shop", "finance", "auditor"):
        status, body, _ = await shop.orders.as_key(await make_key(role)).post("/v1/pos/sales", json=sale(), idem="x")
        assert_problem(status, body, 403, "forbidden")
