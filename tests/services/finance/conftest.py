"""Inventory, orders and finance on one fresh database: a London warehouse and stores in London and
New York, sales made through the orders API, settlements and runs through the finance API."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from ledger.identity import init_identities
from services.inventory import repository as inventory
from shared.settings import Settings
from tests.conftest import Api, ServiceFactory

LOCATIONS: dict[str, dict[str, Any]] = {
    "wh-1": {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True,
             "pickup": False, "timezone": "Europe/London"},
    "store-a": {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": False, "pickup": True,
                "timezone": "Europe/London"},
    "store-ny": {"name": "SoHo NYC", "kind": "store", "lat": 40.7233, "lon": -74.0030, "ship": False,
                 "pickup": True, "timezone": "America/New_York"},
}
SKUS = {"TEE": "19.90", "JEANS": "79.00", "CAP": "9.50", "SOCKS": "3.33"}
LONDON = {"lat": 51.5072, "lon": -0.1276}
_ids = itertools.count(1)


@dataclass
class Books:
    """The three services, a finance key, and helpers to make sales and settle them."""

    inventory: Api
    orders: Api
    finance: Api  # with a finance key
    pool: asyncpg.Pool

    async def stock(self, location_id: str, qty: int = 1000) -> None:
        async with self.pool.acquire() as conn:
            for sku in SKUS:
                await inventory.apply_movement(conn, sku, location_id, "receipt", qty, actor="test")

    async def sell_online(self, lines: dict[str, int] | None = None, charges: list[dict[str, str]] | None = None,
                          external_id: str | None = None) -> dict[str, Any]:
        """Place and fulfil an online order shipped from wh-1; returns the order."""
        body: dict[str, Any] = {
            "channel": "online", "currency": "EUR", "external_id": external_id,
            "lines": [{"sku": sku, "qty": qty, "unit_price": SKUS[sku]} for sku, qty in (lines or {"TEE": 1}).items()],
            "charges": charges or [], "fulfillment": {"type": "ship", "location_id": "wh-1", "ship_to": LONDON},
        }
        status, order, _ = await self.orders.post("/v1/orders", json=body, idem=f"o{next(_ids)}")
        assert status == 201, order
        status, order, _ = await self.orders.post(f"/v1/orders/{order['id']}/fulfill")
        assert status == 200, order
        return order

    async def till(self, location_id: str, lines: dict[str, int], tenders: list[tuple[str, str]]) -> dict[str, Any]:
        body = {"location_id": location_id, "currency": "EUR",
                "lines": [{"sku": sku, "qty": qty, "unit_price": SKUS[sku]} for sku, qty in lines.items()],
                "tenders": [{"kind": k, "amount": a} for k, a in tenders]}
        status, sale, _ = await self.orders.post("/v1/pos/sales", json=body, idem=f"t{next(_ids)}")
        assert status == 201, sale
        return sale

    async def give_back(self, order_id: str, lines: dict[str, int], location_id: str = "wh-1") -> dict[str, Any]:
        body = {"lines": [{"sku": s, "qty": q} for s, q in lines.items()], "location_id": location_id}
        # only a paid order's units are refunded: the customer paid before bringing them back
        _, order, _ = await self.orders.get(f"/v1/orders/{order_id}")
        if order["paid_at"] is None:
            status, paid, _ = await self.orders.post(f"/v1/orders/{order_id}/pay")
            assert status == 200, paid
        status, out, _ = await self.orders.post(f"/v1/orders/{order_id}/returns", json=body, idem=f"r{next(_ids)}")
        assert status == 201, out
        return out

    async def settle(self, *rows: dict[str, Any], expect: int = 201) -> Any:
        status, body, _ = await self.finance.post("/v1/settlements", json=list(rows))
        assert status == expect, body
        return body

    async def run(self, day: date, expect: int = 201, **scope: Any) -> dict[str, Any]:
        status, body, _ = await self.finance.post("/v1/reconciliations",
                                                  json={"business_day": day.isoformat(), **scope})
        assert status == expect, body
        return body

    async def day_of(self, location_id: str) -> date:
        return await self.pool.fetchval(
            "SELECT (now() AT TIME ZONE (SELECT timezone FROM inventory.locations WHERE id = $1))::date",
            location_id)


def payment(order_id: str, amount: str, *, external_id: str | None = None, kind: str = "capture",
            provider: str = "stripe", currency: str = "EUR", settled_at: datetime | None = None,
            fee: str = "0.00") -> dict[str, Any]:
    return {"provider": provider, "external_id": external_id or f"px{next(_ids)}", "order_id": order_id,
            "amount": amount, "fee": fee, "currency": currency, "type": kind,
            "settled_at": (settled_at or datetime.now(UTC)).isoformat()}


def items_of(run: dict[str, Any], cls: str | None = None, kind: str | None = "order") -> list[dict[str, Any]]:
    return [i for i in run["items"] if (cls is None or i["class"] == cls) and (kind is None or i["kind"] == kind)]


def only_item(run: dict[str, Any], order_id: str) -> dict[str, Any]:
    found = [i for i in run["items"] if i["order_id"] == order_id]
    assert len(found) == 1, run["items"]
    return found[0]


@pytest.fixture
async def books(service: ServiceFactory, pool: asyncpg.Pool, make_key: Any, settings: Settings) -> Books:
    init_identities(settings.data_dir)  # `omnistock ledger init`: finance signs its commits with its own key
    inv = await service("inventory")
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await inv.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, price in SKUS.items():
        status, resp, _ = await inv.put(f"/v1/skus/{sku}", json={"name": sku, "price": price, "currency": "EUR"})
        assert status == 201, resp
    finance = (await service("finance")).as_key(await make_key("finance"))
    books = Books(inv, await service("orders"), finance, pool)
    for location_id in LOCATIONS:
        await books.stock(location_id)
    return books
