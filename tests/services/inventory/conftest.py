"""An inventory service with a small catalogue: three stores around London, one warehouse."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, ServiceFactory

LOCATIONS: dict[str, dict[str, Any]] = {
    "store-a": {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": False, "pickup": True},
    "store-b": {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True},
    "store-c": {"name": "Brighton", "kind": "store", "lat": 50.8225, "lon": -0.1372, "ship": False, "pickup": True},
    "wh-1": {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True, "pickup": False},
}
SKUS = {"TEE-M": {"name": "Tee M", "price": "19.90", "currency": "EUR"},
        "JEANS-32": {"name": "Jeans 32", "price": "79.00", "currency": "EUR"}}


async def move(api: Api, key: str, **body: Any) -> tuple[int, Any, Any]:
    return await api.post("/v1/stock/movements", json=body, idem=key)


@pytest.fixture
async def inventory(service: ServiceFactory) -> Api:
    api = await service("inventory")
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await api.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, body in SKUS.items():
        status, resp, _ = await api.put(f"/v1/skus/{sku}", json=body)
        assert status == 201, resp
    return api
