"""The role matrix: who may read and write what."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Api, assert_problem
from tests.services.inventory.conftest import LOCATIONS, SKUS, move

READS = ["/v1/locations", "/v1/locations/store-a", "/v1/skus", "/v1/skus/TEE-M", "/v1/stock/TEE-M",
         "/v1/stock/TEE-M/nearby?location_id=store-a"]


async def test_no_key_or_unknown_key_is_401(inventory: Api) -> None:
    for key in (None, "osk_not_a_real_key"):
        status, body, _ = await inventory.as_key(key).get("/v1/stock/TEE-M")
        assert_problem(status, body, 401, "unauthorized")
    status, body, _ = await inventory.get("/v1/stock/TEE-M", headers={"Authorization": "Basic abc"})
    assert_problem(status, body, 401)


@pytest.mark.parametrize("role", ["admin", "ops", "store", "shop", "finance", "auditor"])
async def test_every_role_reads(inventory: Api, make_key: Callable[..., Awaitable[str]], role: str) -> None:
    key = await make_key(role, "store-b" if role == "store" else None)
    for path in READS:
        status, body, _ = await inventory.as_key(key).get(path)
        assert status == 200, (path, body)


@pytest.mark.parametrize("role,allowed", [("admin", True), ("ops", True), ("store", False), ("shop", False),
                                          ("finance", False), ("auditor", False)])
async def test_only_admin_and_ops_change_the_catalogue(
    inventory: Api, make_key: Callable[..., Awaitable[str]], role: str, allowed: bool
) -> None:
    api = inventory.as_key(await make_key(role, "store-a" if role == "store" else None))
    status, body, _ = await api.put("/v1/locations/store-a", json=LOCATIONS["store-a"])
    assert status == 200 if allowed else status == 403, body
    status, body, _ = await api.put("/v1/skus/TEE-M", json=SKUS["TEE-M"])
    assert status == 200 if allowed else status == 403, body


@pytest.mark.parametrize("role,allowed", [("admin", True), ("ops", True), ("shop", False), ("finance", False),
                                          ("auditor", False)])
async def test_stock_writers(inventory: Api, make_key: Callable[..., Awaitable[str]], role: str, allowed: bool) -> None:
    api = inventory.as_key(await make_key(role))
    status, body, _ = await move(api, "k", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    assert status == (201 if allowed else 403), body


async def test_store_key_changes_only_its_own_location(
    inventory: Api, make_key: Callable[..., Awaitable[str]]
) -> None:
    store_a = inventory.as_key(await make_key("store", "store-a"))
    status, _, _ = await move(store_a, "own", sku="TEE-M", location_id="store-a", kind="receipt", qty=5)
    assert status == 201
    status, body, _ = await move(store_a, "other", sku="TEE-M", location_id="store-b", kind="receipt", qty=5)
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await store_a.put("/v1/stock/TEE-M/locations/store-b/safety-stock", json={"safety_stock": 1})
    assert_problem(status, body, 403)
    status, body, _ = await store_a.put("/v1/stock/TEE-M/locations/store-a/safety-stock", json={"safety_stock": 2})
    assert status == 200 and body["available"] == 3
    # A store may send its own stock to another store.
    status, body, _ = await move(store_a, "send", sku="TEE-M", location_id="store-a", kind="transfer", qty=1,
                                 to_location_id="store-b")
    assert status == 201, body
    _, stock, _ = await inventory.get("/v1/stock/TEE-M")
    assert {lv["location_id"]: lv["on_hand"] for lv in stock["locations"]} == {"store-a": 4, "store-b": 1}


async def test_public_endpoints_need_no_key(inventory: Api) -> None:
    anonymous = inventory.as_key(None)
    for path in ("/healthz", "/readyz", "/openapi.json"):
        status, body, _ = await anonymous.get(path)
        assert status == 200, (path, body)
    status, body, _ = await anonymous.get("/metrics")
    assert status == 200 and "omnistock_http_requests_total" in body
