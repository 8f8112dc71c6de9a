"""Bad input gets a 4xx problem naming the field, and changes nothing."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, assert_problem
from tests.services.inventory.conftest import move

GOOD = {"sku": "TEE-M", "location_id": "store-a", "kind": "receipt", "qty": 3}


async def nothing_changed(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT count(*) FROM inventory.stock_movements") == 0
    assert await pool.fetchval("SELECT count(*) FROM inventory.stock_levels") == 0
    assert await pool.fetchval("SELECT count(*) FROM core.events WHERE topic LIKE 'stock.%'") == 0


@pytest.mark.parametrize("change,field", [
    ({"qty": 0}, "qty"),
    ({"qty": -3}, "qty"),
    ({"qty": 5_000_000}, "qty"),
    ({"qty": 10**30}, "qty"),
    ({"qty": "3"}, "qty"),
    ({"qty": 2.5}, "qty"),
    ({"qty": True}, "qty"),
    ({"qty": None}, "qty"),
    ({"kind": "teleport"}, "kind"),
    ({"sku": "NOPE"}, "sku"),
    ({"sku": ""}, "sku"),
    ({"sku": "x" * 300}, "sku"),
    ({"location_id": "nowhere"}, "location_id"),
    ({"location_id": 7}, "location_id"),
    ({"kind": "transfer"}, "to_location_id"),
    ({"kind": "transfer", "to_location_id": "store-a"}, "to_location_id"),
    ({"kind": "transfer", "to_location_id": "nowhere"}, "to_location_id"),
    ({"to_location_id": "store-b"}, "to_location_id"),
    ({"kind": "adjustment", "qty": 0}, "qty"),
    ({"kind": "count", "qty": -1}, "qty"),
    ({"colour": "red"}, "colour"),
])
async def test_bad_movement_is_422_naming_the_field(inventory: Api, pool: asyncpg.Pool,
                                                     change: dict[str, Any], field: str) -> None:
    status, body, _ = await move(inventory, "k", **{**GOOD, **change})
    assert_problem(status, body, 422, field=field)
    await nothing_changed(pool)


async def test_missing_field_is_named(inventory: Api, pool: asyncpg.Pool) -> None:
    status, body, _ = await move(inventory, "k", sku="TEE-M", location_id="store-a", kind="receipt")
    assert_problem(status, body, 422, field="qty")
    await nothing_changed(pool)


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"sku": "TEE-M",}', b"\xff\xfe"])
async def test_malformed_json_is_400(inventory: Api, pool: asyncpg.Pool, raw: bytes) -> None:
    status, body, _ = await inventory.post("/v1/stock/movements", data=raw, idem="k",
                                           headers={"Content-Type": "application/json"})
    assert_problem(status, body, 400, "malformed-json")
    await nothing_changed(pool)


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"text"', b"null", b""])
async def test_json_that_is_not_an_object_is_422(inventory: Api, pool: asyncpg.Pool, raw: bytes) -> None:
    status, body, _ = await inventory.post("/v1/stock/movements", data=raw, idem="k",
                                           headers={"Content-Type": "application/json"})
    assert_problem(status, body, 422)
    await nothing_changed(pool)


async def test_oversized_body_is_413(inventory: Api, pool: asyncpg.Pool) -> None:
    huge = b'{"sku": "TEE-M", "reason": "' + b"x" * 2_000_000 + b'"}'
    status, body, _ = await inventory.post("/v1/stock/movements", data=io.BytesIO(huge), idem="k",
                                           headers={"Content-Type": "application/json"})
    assert_problem(status, body, 413)
    await nothing_changed(pool)


async def test_wrong_content_type_is_415(inventory: Api, pool: asyncpg.Pool) -> None:
    status, body, _ = await inventory.post("/v1/stock/movements", data=b"sku=TEE-M", idem="k",
                                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_problem(status, body, 415)
    await nothing_changed(pool)


async def test_missing_or_absurd_idempotency_key_is_400(inventory: Api, pool: asyncpg.Pool) -> None:
    status, body, _ = await inventory.post("/v1/stock/movements", json=GOOD)
    assert_problem(status, body, 400)
    status, body, _ = await inventory.post("/v1/stock/movements", json=GOOD, idem="k" * 500)
    assert_problem(status, body, 400)
    await nothing_changed(pool)


@pytest.mark.parametrize("body,field", [
    ({"name": "X", "kind": "store", "lat": 91, "lon": 0, "ship": True, "pickup": True}, "lat"),
    ({"name": "X", "kind": "store", "lat": 0, "lon": -181, "ship": True, "pickup": True}, "lon"),
    ({"name": "X", "kind": "kiosk", "lat": 0, "lon": 0, "ship": True, "pickup": True}, "kind"),
    ({"name": "", "kind": "store", "lat": 0, "lon": 0, "ship": True, "pickup": True}, "name"),
    ({"name": "X", "kind": "store", "lat": 0, "lon": 0, "ship": "yes", "pickup": True}, "ship"),
    ({"name": "X", "kind": "store", "lat": 0, "lon": 0, "ship": True, "pickup": True, "timezone": "Mars/Base"},
     "timezone"),
    ({"kind": "store", "lat": 0, "lon": 0, "ship": True, "pickup": True}, "name"),
])
async def test_bad_location_is_422(inventory: Api, body: dict[str, Any], field: str) -> None:
    status, resp, _ = await inventory.put("/v1/locations/new-store", json=body)
    assert_problem(status, resp, 422, field=field)
    status, _, _ = await inventory.get("/v1/locations/new-store")
    assert status == 404


async def test_bad_location_id_in_path_is_422(inventory: Api) -> None:
    body = {"name": "X", "kind": "store", "lat": 0, "lon": 0, "ship": True, "pickup": True}
    status, resp, _ = await inventory.put("/v1/locations/bad%20id", json=body)
    assert_problem(status, resp, 422, field="location_id")


@pytest.mark.parametrize("body,field", [
    ({"name": "X", "price": "-1.00", "currency": "EUR"}, "price"),
    ({"name": "X", "price": "1.001", "currency": "EUR"}, "price"),
    ({"name": "X", "price": "abc", "currency": "EUR"}, "price"),
    ({"name": "X", "price": "1e40", "currency": "EUR"}, "price"),
    ({"name": "X", "price": "1.00", "currency": "euro"}, "currency"),
])
async def test_bad_sku_is_422(inventory: Api, body: dict[str, Any], field: str) -> None:
    status, resp, _ = await inventory.put("/v1/skus/NEW-SKU", json=body)
    assert_problem(status, resp, 422, field=field)


async def test_money_round_trips_as_a_decimal_string(inventory: Api) -> None:
    status, body, _ = await inventory.put("/v1/skus/NEW-SKU", json={"name": "X", "price": "12.30", "currency": "EUR"})
    assert status == 201 and body["price"] == "12.30"


@pytest.mark.parametrize("query,field", [
    ("lat=0", "query"), ("lat=abc&lon=0", "lat"), ("lat=95&lon=0", "lat"), ("lon=0", "query"),
    ("location_id=store-a&lat=0&lon=0", "query"), ("location_id=store-a&radius_km=-5", "radius_km"),
    ("location_id=store-a&radius_km=nan", "radius_km"), ("location_id=store-a&min_available=-1", "min_available"),
    ("location_id=store-a&limit=100000", "limit"), ("location_id=nowhere", "location_id"),
    ("location_id=store-a&bogus=1", "bogus"), ("", "query"),
])
async def test_bad_nearby_query_is_422(inventory: Api, query: str, field: str) -> None:
    status, body, _ = await inventory.get(f"/v1/stock/TEE-M/nearby?{query}")
    assert_problem(status, body, 422)
    if field != "query":
        assert field in [e["field"] for e in body["errors"]], body


async def test_unknown_sku_reads_are_404(inventory: Api) -> None:
    for path in ("/v1/stock/NOPE", "/v1/stock/NOPE/nearby?location_id=store-a", "/v1/skus/NOPE", "/v1/locations/x"):
        status, body, _ = await inventory.get(path)
        assert_problem(status, body, 404)


async def test_unknown_route_and_method_are_problems(inventory: Api) -> None:
    status, body, _ = await inventory.get("/v1/nothing-here")
    assert_problem(status, body, 404)
    status, body, _ = await inventory.request("DELETE", "/v1/stock/TEE-M")
    assert_problem(status, body, 405)


async def test_bad_last_event_id_is_422(inventory: Api) -> None:
    status, body, _ = await inventory.get("/v1/events", headers={"Last-Event-ID": "abc"})
    assert_problem(status, body, 422, field="Last-Event-ID")
    status, body, _ = await inventory.get("/v1/events", headers={"Last-Event-ID": "999999"})
    assert_problem(status, body, 422, field="Last-Event-ID")
