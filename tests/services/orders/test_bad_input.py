"""Bad input gets a 4xx problem naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop, order_body

LINE = {"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}


async def nothing_changed(shop: Shop) -> None:
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.orders") == 0
    assert await shop.pool.fetchval("SELECT count(*) FROM inventory.stock_movements WHERE kind <> 'receipt'") == 0
    assert await shop.pool.fetchval("SELECT count(*) FROM core.events WHERE topic LIKE 'order.%'") == 0
    assert await shop.level("TEE-M", "wh-1") == (10, 0)


BAD_ORDERS: list[tuple[dict[str, Any], str]] = [
    ({"lines": [{**LINE, "qty": 0}]}, "lines.0.qty"),
    ({"lines": [{**LINE, "qty": -2}]}, "lines.0.qty"),
    ({"lines": [{**LINE, "qty": "2"}]}, "lines.0.qty"),
    ({"lines": [{**LINE, "qty": 1.5}]}, "lines.0.qty"),
    ({"lines": [{**LINE, "qty": 10**12}]}, "lines.0.qty"),
    ({"lines": [{**LINE, "unit_price": "-1.00"}]}, "lines.0.unit_price"),
    ({"lines": [{**LINE, "unit_price": "1.001"}]}, "lines.0.unit_price"),
    ({"lines": [{**LINE, "unit_price": "abc"}]}, "lines.0.unit_price"),
    ({"lines": [{**LINE, "unit_price": "NaN"}]}, "lines.0.unit_price"),
    ({"lines": [LINE, {**LINE, "sku": "NOPE"}]}, "lines.1.sku"),
    ({"lines": [LINE, LINE]}, "lines.1.sku"),
    ({"lines": []}, "lines"),
    ({"lines": "TEE-M"}, "lines"),
    ({"lines": [{**LINE, "colour": "red"}]}, "lines.0.colour"),
    ({"channel": "fax"}, "channel"),
    ({"currency": "euro"}, "currency"),
    ({"currency": "USD"}, "currency"),
    ({"charges": [{"kind": "tip", "amount": "1.00"}]}, "charges.0.kind"),
    ({"charges": [{"kind": "discount", "amount": "50.00"}]}, "charges"),
    ({"charges": [{"kind": "tax", "amount": -1}]}, "charges.0.amount"),
    ({"fulfillment": {"type": "teleport"}}, "fulfillment.type"),
    ({"fulfillment": {"type": "pickup"}}, "fulfillment"),
    ({"fulfillment": {"type": "pickup", "location_id": "nowhere"}}, "fulfillment.location_id"),
    ({"fulfillment": {"type": "ship", "location_id": "store-a"}}, "fulfillment.location_id"),
    ({"fulfillment": {"type": "ship", "ship_to": {"lat": 91, "lon": 0}}}, "fulfillment.ship_to.lat"),
    ({"channel": "store"}, "selling_location_id"),
    ({"selling_location_id": "store-a"}, "selling_location_id"),
    ({"channel": "store", "selling_location_id": "nowhere"}, "selling_location_id"),
    ({"surprise": 1}, "surprise"),
]


async def test_bad_order_is_422_naming_the_field(shop: Shop) -> None:
    # one database for all cases (fast); each case must leave it untouched
    await shop.receive("TEE-M", "wh-1", 10)
    for i, (change, field) in enumerate(BAD_ORDERS):
        status, body, _ = await shop.orders.post("/v1/orders", json=order_body(**change), idem=f"k{i}")
        assert status == 422, (change, body)
        assert_problem(status, body, 422, field=field)
        await nothing_changed(shop)


async def test_malformed_requests_are_4xx_and_change_nothing(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    orders = shop.orders
    cases = [
        (await orders.post("/v1/orders", data=b"{not json", idem="a",
                           headers={"Content-Type": "application/json"}), 400, "malformed-json"),
        (await orders.post("/v1/orders", data=b"", idem="b", headers={"Content-Type": "application/json"}), 422, None),
        (await orders.post("/v1/orders", data=b"[1, 2]", idem="c",
                           headers={"Content-Type": "application/json"}), 422, None),
        (await orders.post("/v1/orders", data=b"channel=online", idem="d",
                           headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, None),
        (await orders.post("/v1/orders", json=order_body()), 400, "bad-request"),  # no Idempotency-Key
        (await orders.post("/v1/pos/sales", json={"location_id": "store-a"}, idem="e"), 422, None),
    ]
    for (status, body, _), expected, code in cases:
        assert_problem(status, body, expected, code)
    await nothing_changed(shop)


async def test_bad_lifecycle_bodies_are_422(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    _, order, _ = await shop.place("o")
    path = f"/v1/orders/{order['id']}"
    for action, body, field in [
        ("cancel", {"lines": [{"sku": "TEE-M", "qty": 0}]}, "lines.0.qty"),
        ("cancel", {"lines": [{"sku": "CAP", "qty": 1}]}, "lines.0.sku"),
        ("fulfill", {"lines": []}, "lines"),
        ("fulfill", {"everything": True}, "everything"),
        ("pay", {"amount": "x"}, "amount"),
        ("returns", {"lines": [{"sku": "TEE-M", "qty": 1}]}, "location_id"),
        ("returns", {"lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "nowhere"}, "location_id"),
    ]:
        status, out, _ = await shop.orders.post(f"{path}/{action}", json=body, idem=f"{action}-{field}")
        assert_problem(status, out, 422, field=field)
    status, out, _ = await shop.orders.post(f"{path}/cancel", data=b"{oops",
                                            headers={"Content-Type": "application/json"})
    assert_problem(status, out, 400, "malformed-json")
    assert await shop.level("TEE-M", "wh-1") == (10, 1)
    _, got, _ = await shop.orders.get(path)
    assert got["status"] == "placed" and len(got["history"]) == 1


async def test_query_dates_are_iso_strings_only(shop: Shop) -> None:
    for path, params, field in [("/v1/orders", {"cursor": "0.5"}, "cursor"),
                                ("/v1/orders", {"before": "2030-01-01T00:00:00Z"}, "before"),  # gone: a cursor
                                ("/v1/orders", {"limit": "0"}, "limit"),
                                ("/v1/sales", {"business_day": "0"}, "business_day"),
                                ("/v1/sales", {}, "business_day")]:
        status, body, _ = await shop.orders.get(path, params=params)
        assert_problem(status, body, 422, field=field)
    status, body, _ = await shop.orders.get("/v1/orders", params={"status": "cancelled"})
    assert status == 200 and body == {"items": [], "next_cursor": None}
