"""Inventory and orders on one database: a warehouse, stores around London and one in New York."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from services.inventory import repository as inventory
from services.orders import repository as orders_repo
from tests.conftest import Api, ServiceFactory

LOCATIONS: dict[str, dict[str, Any]] = {
    "wh-1": {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True,
             "pickup": False, "priority": 10, "timezone": "Europe/London"},
    "wh-2": {"name": "Manchester DC", "kind": "warehouse", "lat": 53.4808, "lon": -2.2426, "ship": True,
             "pickup": False, "priority": 10, "timezone": "Europe/London"},
    "store-a": {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": False, "pickup": True,
                "timezone": "Europe/London"},
    "store-b": {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True,
                "timezone": "Europe/London"},
    "store-ny": {"name": "SoHo NYC", "kind": "store", "lat": 40.7233, "lon": -74.0030, "ship": False,
                 "pickup": True, "timezone": "America/New_York"},
}
SKUS = {"TEE-M": {"name": "Tee M", "price": "19.90", "currency": "EUR"},
        "JEANS-32": {"name": "Jeans 32", "price": "79.00", "currency": "EUR"},
        "CAP": {"name": "Cap", "price": "9.50", "currency": "EUR"},
        "MUG-US": {"name": "Mug", "price": "12.00", "currency": "USD"}}
LONDON = {"lat": 51.5072, "lon": -0.1276}
MANCHESTER = {"lat": 53.47, "lon": -2.24}


@dataclass
class Shop:
    """Both services and the database, with helpers that read the truth straight from the tables."""

    inventory: Api
    orders: Api
    pool: asyncpg.Pool

    async def receive(self, sku: str, location_id: str, qty: int) -> None:
        async with self.pool.acquire() as conn:
            await inventory.apply_movement(conn, sku, location_id, "receipt", qty, actor="test")

    async def level(self, sku: str, location_id: str) -> tuple[int, int]:
        row = await self.pool.fetchrow(
            "SELECT on_hand, reserved FROM inventory.stock_levels WHERE sku = $1 AND location_id = $2",
            sku, location_id)
        return (row["on_hand"], row["reserved"]) if row else (0, 0)

    async def place(self, key: str, api: Api | None = None, **changes: Any) -> tuple[int, Any, Any]:
        return await (api or self.orders).post("/v1/orders", json=order_body(**changes), idem=key)

    async def consistent(self) -> None:
        assert await inventory.level_sums_mismatch(self.pool) == []
        assert await orders_repo.reservation_drift(self.pool) == []


def order_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "online", "currency": "EUR",
        "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}],
        "fulfillment": {"type": "ship", "ship_to": LONDON},
    }
    body.update(changes)
    return body


@pytest.fixture
async def shop(service: ServiceFactory, pool: asyncpg.Pool) -> Shop:
    inv = await service("inventory")
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await inv.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, body in SKUS.items():
        status, resp, _ = await inv.put(f"/v1/skus/{sku}", json=body)
        assert status == 201, resp
    return Shop(inv, await service("orders"), pool)
