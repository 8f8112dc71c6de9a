"""Who may call what: every route of every service x every role, the store key at its own location and
at another, and no key. One table (ROWS) is both the test and the README's access matrix.

A cell is `yes` (a 2xx: the call is valid and went through, not merely past the door), `403` or `401`;
a refused cell must also leave every table as it was.
Each cell prepares its own objects (a fresh order, a fresh run, ...), so cells never depend on one
another. The store key "own" is bound to store-a, where each row's objects are; "other" to store-b.

    python -m tests.test_access_matrix           # print the matrix block the README must contain
    python -m tests.test_access_matrix --write   # write it into README.md between the markers
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from ledger.cosign import Cosigner
from ledger.identity import TrustCache, init_identities, load_identity, msp_dir
from ledger.service.use_cases import open_ledger
from ledger.signing import sign_submission
from services import registry
from services.inventory import repository as inventory
from shared.auth import create_api_key, hash_key
from shared.http.api import Api as RouteTable
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, Api, ServiceFactory

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- access matrix: start -->", "<!-- access matrix: end -->"
COLUMNS = ("admin", "ops", "store (own)", "store (other)", "shop", "finance", "auditor", "no key")
EVERY_KEY = COLUMNS[:-1]
OWN, OTHER = "store-a", "store-b"
SHOP_SECRET = "shop-secret-for-the-access-matrix"
LONDON = {"lat": 51.5072, "lon": -0.1276}
ROUTE_MODULES = {"inventory": "services.inventory.routes", "orders": "services.orders.routes",
                 "ecommerce": "services.ecommerce.routes", "finance": "services.finance.routes",
                 "ledger": "ledger.service.routes"}
SYSTEM_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
LOCATIONS = {
    "wh-1": {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True,
             "pickup": False, "timezone": "Europe/London"},
    OWN: {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": True, "pickup": True,
          "timezone": "Europe/London"},
    OTHER: {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True,
            "timezone": "Europe/London"},
}
# TEE is everywhere; SPLIT-A only at store-a and SPLIT-W only at wh-1, so an order of both is split.
STOCK = {"TEE": ("wh-1", OWN, OTHER), "SPLIT-A": (OWN,), "SPLIT-W": ("wh-1",)}


# --- the world every cell runs in ------------------------------------------------------------------


@dataclass
class Req:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idem: bool = False


@dataclass
class World:
    apis: dict[str, Api]  # each service, as admin
    pool: asyncpg.Pool
    keys: dict[str, str | None]  # column -> API key
    data_dir: Path  # the organisations' identities (`omnistock ledger init`)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))  # type: ignore[type-arg]

    def uid(self, prefix: str = "u") -> str:
        return f"{prefix}{next(self.counter)}"

    @property
    def finance(self) -> Api:
        return self.apis["finance"].as_key(self.keys["finance"])

    def location_of(self, column: str) -> str:
        """The store a key works at: its own for a store key, store-a for everyone else."""
        return OTHER if column == "store (other)" else OWN

    async def order(self, lines: dict[str, int] | None = None, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "channel": "online", "currency": "EUR",
            "lines": [{"sku": sku, "qty": qty, "unit_price": "10.00"} for sku, qty in (lines or {"TEE": 1}).items()],
            "fulfillment": {"type": "pickup", "location_id": OWN}, **changes}
        status, order, _ = await self.apis["orders"].post("/v1/orders", json=body, idem=self.uid("o"))
        assert status == 201, order
        return order

    async def act(self, order: dict[str, Any], action: str) -> dict[str, Any]:
        status, body, _ = await self.apis["orders"].post(f"/v1/orders/{order['id']}/{action}")
        assert status == 200, body
        return body

    async def split(self) -> dict[str, Any]:
        order = await self.order({"SPLIT-A": 1, "SPLIT-W": 1}, fulfillment={"type": "ship", "ship_to": LONDON})
        assert {a["location_id"] for a in order["allocations"]} == {OWN, "wh-1"}, order
        return order

    async def subscription(self) -> int:
        status, sub, _ = await self.apis["ecommerce"].post("/v1/webhooks", json={
            "url": "http://127.0.0.1:9/hook", "events": ["availability.changed"], "secret": "s" * 20})
        assert status == 201, sub
        return int(sub["id"])

    async def delivery(self) -> tuple[int, int]:
        sub = await self.subscription()
        delivery_id = await self.pool.fetchval(
            "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status)"
            " VALUES ($1, 1, 'availability.changed', 'TEE', '{}'::bytea, 'delivered') RETURNING id", sub)
        return sub, delivery_id

    async def run(self, with_exception: bool = False) -> dict[str, Any]:
        """A reconciliation run of a day of its own (a run supersedes the last of its day)."""
        day = date(2024, 1, 1) + timedelta(days=next(self.counter))
        if with_exception:  # a payment no sale accounts for: item 1, missing_sale
            await self.settle(day)
        status, run, _ = await self.finance.post("/v1/reconciliations", json={"business_day": day.isoformat()})
        assert status == 201, run
        return run

    async def settle(self, day: date | None = None) -> list[dict[str, Any]]:
        at = datetime.combine(day or date(2024, 5, 1), datetime.min.time(), UTC) + timedelta(hours=12)
        rows = [{"provider": "stripe", "external_id": self.uid("px"), "order_id": self.uid("ghost"),
                 "amount": "1.00", "fee": "0.00", "currency": "EUR", "settled_at": at.isoformat()}]
        status, body, _ = await self.finance.post("/v1/settlements", json=rows)
        assert status == 201, body
        return rows


Prepare = Callable[[World, str], Awaitable[Req]]
Verify = Callable[[World, str, Any], Awaitable[None]]


@dataclass(frozen=True)
class Row:
    service: str
    method: str
    path: str  # exactly as the route is registered
    allowed: tuple[str, ...]  # the columns that get a 2xx; every other key gets 403, no key 401
    prepare: Prepare
    case: str = ""
    verify: Verify | None = None  # more to check on an allowed cell's answer
    cells: dict[str, str] | None = None  # the whole row spelled out, for routes that take no API key

    @property
    def call(self) -> str:
        return f"`{self.method} {self.path}`"

    def expected(self) -> dict[str, str]:
        if self.cells is not None:
            return self.cells
        return {c: "yes" if c in self.allowed else "401" if c == "no key" else "403" for c in COLUMNS}


def const(method: str, path: str, **kw: Any) -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        return Req(method, path, **kw)

    return prepare


ALL = EVERY_KEY
OPERATORS = ("admin", "ops")
STORE_OWN = ("admin", "ops", "store (own)")
STORES = ("store (own)", "store (other)")
SALES_READERS = ("admin", "ops", "finance", "auditor")
FINANCE = ("finance",)
BOOKS = ("finance", "auditor")
EVERYONE = {c: "yes" for c in COLUMNS}


# --- inventory -------------------------------------------------------------------------------------


async def movement(world: World, column: str) -> Req:
    return Req("POST", "/v1/stock/movements", idem=True,
               json={"sku": "TEE", "location_id": OWN, "kind": "receipt", "qty": 1})


async def transfer(world: World, column: str) -> Req:
    return Req("POST", "/v1/stock/movements", idem=True,
               json={"sku": "TEE", "location_id": OWN, "kind": "transfer", "qty": 1, "to_location_id": OTHER})


INVENTORY = [
    Row("inventory", "PUT", "/v1/locations/{location_id}", OPERATORS,
        const("PUT", f"/v1/locations/{OWN}", json=LOCATIONS[OWN])),
    Row("inventory", "GET", "/v1/locations", ALL, const("GET", "/v1/locations")),
    Row("inventory", "GET", "/v1/locations/{location_id}", ALL, const("GET", f"/v1/locations/{OTHER}")),
    Row("inventory", "PUT", "/v1/skus/{sku}", OPERATORS,
        const("PUT", "/v1/skus/TEE", json={"name": "Tee", "price": "10.00", "currency": "EUR"})),
    Row("inventory", "GET", "/v1/skus", ALL, const("GET", "/v1/skus")),
    Row("inventory", "GET", "/v1/skus/{sku}", ALL, const("GET", "/v1/skus/TEE")),
    Row("inventory", "POST", "/v1/stock/movements", STORE_OWN, movement, "a receipt at store-a"),
    Row("inventory", "POST", "/v1/stock/movements", STORE_OWN, transfer, "a transfer from store-a to store-b"),
    Row("inventory", "GET", "/v1/stock/movements", ALL, const("GET", "/v1/stock/movements", params={"sku": "TEE"})),
    Row("inventory", "GET", "/v1/stock", ALL, const("GET", "/v1/stock", params={"location_id": OWN})),
    Row("inventory", "GET", "/v1/stock/{sku}", ALL, const("GET", "/v1/stock/TEE")),
    Row("inventory", "PUT", "/v1/stock/{sku}/locations/{location_id}/safety-stock", STORE_OWN,
        const("PUT", f"/v1/stock/TEE/locations/{OWN}/safety-stock", json={"safety_stock": 1}), "at store-a"),
    Row("inventory", "GET", "/v1/stock/{sku}/nearby", ALL,
        const("GET", "/v1/stock/TEE/nearby", params={"location_id": OWN})),
    Row("inventory", "GET", "/v1/events", ALL, const("GET", "/v1/events")),
]


# --- orders ----------------------------------------------------------------------------------------


async def place_online(world: World, column: str) -> Req:
    return Req("POST", "/v1/orders", idem=True, json={
        "channel": "online", "currency": "EUR", "lines": [{"sku": "TEE", "qty": 1, "unit_price": "10.00"}],
        "fulfillment": {"type": "pickup", "location_id": OWN}})


async def place_at_store(world: World, column: str) -> Req:
    return Req("POST", "/v1/orders", idem=True, json={
        "channel": "store", "selling_location_id": OWN, "currency": "EUR",
        "lines": [{"sku": "TEE", "qty": 1, "unit_price": "10.00"}],
        "fulfillment": {"type": "pickup", "location_id": OWN}})


async def list_orders(world: World, column: str) -> Req:
    await world.order()  # picked up at store-a
    await world.order(fulfillment={"type": "ship", "location_id": "wh-1", "ship_to": LONDON})
    return Req("GET", "/v1/orders", params={"limit": 200})


async def only_orders_of_its_store(world: World, column: str, body: Any) -> None:
    if column in STORES:
        here = world.location_of(column)
        assert column == "store (other)" or body["items"], "store-a's own orders are missing"
        for order in body["items"]:
            involved = {order["selling_location_id"], order["fulfillment"]["location_id"],
                        *(a["location_id"] for a in order["allocations"])}
            assert here in involved, f"{column} listed order {order['id']} at {involved}"
    else:
        assert any(o["fulfillment"]["location_id"] == "wh-1" for o in body["items"]), "other roles see every order"


async def list_orders_at_own(world: World, column: str) -> Req:
    await world.order()
    return Req("GET", "/v1/orders", params={"location_id": OWN})


async def get_order(world: World, column: str) -> Req:
    return Req("GET", f"/v1/orders/{(await world.order())['id']}")


def on_order(action: str, make: Callable[[World], Awaitable[dict[str, Any]]], json: Any = None) -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        return Req("POST", f"/v1/orders/{(await make(world))['id']}/{action}", json=json)

    return prepare


async def pickup(world: World) -> dict[str, Any]:
    return await world.order()


async def shipped_from_own(world: World) -> dict[str, Any]:
    return await world.order(fulfillment={"type": "ship", "location_id": OWN, "ship_to": LONDON})


async def sold_at_own(world: World) -> dict[str, Any]:
    return await world.order(channel="store", selling_location_id=OWN,
                             fulfillment={"type": "ship", "location_id": "wh-1", "ship_to": LONDON})


async def split(world: World) -> dict[str, Any]:
    return await world.split()


async def paid_and_fulfilled(world: World) -> dict[str, Any]:
    order = await world.order()
    await world.act(order, "pay")
    return await world.act(order, "fulfill")


async def wh1_units_still_open(world: World, column: str, body: Any) -> None:
    if column == "store (own)":
        assert {(a["location_id"], a["open"]) for a in body["allocations"]} == {(OWN, 0), ("wh-1", 1)}, body


async def give_back(world: World, column: str) -> Req:
    order = await world.order(fulfillment={"type": "ship", "location_id": "wh-1", "ship_to": LONDON})
    await world.act(order, "pay")  # only paid units are refunded
    await world.act(order, "fulfill")
    return Req("POST", f"/v1/orders/{order['id']}/returns", idem=True,
               json={"lines": [{"sku": "TEE", "qty": 1}], "location_id": OWN})


async def give_back_here(world: World, column: str) -> Req:
    req = await give_back(world, column)
    req.json["location_id"] = world.location_of(column)
    return req


async def till(world: World, column: str) -> Req:
    return Req("POST", "/v1/pos/sales", idem=True, json={
        "location_id": OWN, "currency": "EUR", "lines": [{"sku": "TEE", "qty": 1, "unit_price": "10.00"}],
        "tenders": [{"kind": "cash", "amount": "10.00"}]})


PAYERS_OF_PICKUP = ("admin", "ops", "store (own)", "shop")
ORDERS = [
    Row("orders", "POST", "/v1/orders", ("admin", "ops", "shop"), place_online, "channel online"),
    Row("orders", "POST", "/v1/orders", STORE_OWN, place_at_store, "channel store, sold at store-a"),
    Row("orders", "GET", "/v1/orders", ALL, list_orders, "a store key: only orders involving its location",
        verify=only_orders_of_its_store),
    Row("orders", "GET", "/v1/orders", ("admin", "ops", "store (own)", "shop", "finance", "auditor"),
        list_orders_at_own, "?location_id=store-a"),
    Row("orders", "GET", "/v1/orders/{order_id}", ALL, get_order, "by id (the receipt), any order"),
    Row("orders", "POST", "/v1/orders/{order_id}/pay", PAYERS_OF_PICKUP, on_order("pay", pickup),
        "online, picked up at store-a"),
    Row("orders", "POST", "/v1/orders/{order_id}/pay", ("admin", "ops", "shop"), on_order("pay", shipped_from_own),
        "online, shipped from store-a's stock"),
    Row("orders", "POST", "/v1/orders/{order_id}/pay", STORE_OWN, on_order("pay", sold_at_own),
        "sold at store-a, shipped from wh-1"),
    Row("orders", "POST", "/v1/orders/{order_id}/cancel", PAYERS_OF_PICKUP, on_order("cancel", pickup),
        "online, picked up at store-a"),
    Row("orders", "POST", "/v1/orders/{order_id}/cancel", PAYERS_OF_PICKUP, on_order("cancel", split),
        "units at store-a and wh-1, no body (a store: its own units only)", verify=wh1_units_still_open),
    Row("orders", "POST", "/v1/orders/{order_id}/cancel", ("admin", "ops", "shop"),
        on_order("cancel", split, {"lines": [{"sku": "SPLIT-W", "qty": 1, "location_id": "wh-1"}]}),
        "naming wh-1's units"),
    Row("orders", "POST", "/v1/orders/{order_id}/cancel", ("admin", "ops"), on_order("cancel", sold_at_own),
        "sold at store-a, units at wh-1"),
    Row("orders", "POST", "/v1/orders/{order_id}/fulfill", STORE_OWN, on_order("fulfill", pickup),
        "picked up at store-a"),
    Row("orders", "POST", "/v1/orders/{order_id}/fulfill", STORE_OWN, on_order("fulfill", split),
        "units at store-a and wh-1, no body (a store: its own units only)", verify=wh1_units_still_open),
    Row("orders", "POST", "/v1/orders/{order_id}/fulfill", OPERATORS,
        on_order("fulfill", split, {"lines": [{"sku": "SPLIT-W", "qty": 1, "location_id": "wh-1"}]}),
        "naming wh-1's units"),
    Row("orders", "POST", "/v1/orders/{order_id}/pickup-stage", STORE_OWN,
        on_order("pickup-stage", pickup, {"stage": "ready"}), "picked up at store-a"),
    Row("orders", "POST", "/v1/orders/{order_id}/complete", STORE_OWN, on_order("complete", paid_and_fulfilled),
        "picked up at store-a"),
    Row("orders", "POST", "/v1/orders/{order_id}/returns", STORE_OWN, give_back,
        "restocking at store-a (an order shipped from wh-1)"),
    Row("orders", "POST", "/v1/orders/{order_id}/returns", ("admin", "ops", *STORES), give_back_here,
        "restocking at the caller's own store (any order)"),
    Row("orders", "POST", "/v1/pos/sales", STORE_OWN, till, "at store-a"),
    Row("orders", "GET", "/v1/sales", SALES_READERS, const("GET", "/v1/sales", params={"business_day": "2024-05-01"})),
    Row("orders", "POST", "/v1/orders/reservations/sweep", ("admin",),
        const("POST", "/v1/orders/reservations/sweep")),
]


# --- e-commerce ------------------------------------------------------------------------------------


def shop_order(signed: bool) -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        raw = orjson.dumps({
            "id": 10**12 + next(world.counter), "currency": "EUR", "financial_status": "pending",
            "created_at": datetime.now(UTC).isoformat(),  # inside the replay window
            "line_items": [{"id": 1, "sku": "TEE", "quantity": 1, "price": "10.00"}],
            "shipping_address": {"latitude": LONDON["lat"], "longitude": LONDON["lon"]}})
        headers = {"Content-Type": "application/json"}
        if signed:
            digest = hmac.new(SHOP_SECRET.encode(), raw, hashlib.sha256).digest()
            headers["X-Shopify-Hmac-Sha256"] = base64.b64encode(digest).decode()
        return Req("POST", "/v1/shop/orders", data=raw, headers=headers)

    return prepare


async def rule_to_delete(world: World, column: str) -> Req:
    status, body, _ = await world.apis["ecommerce"].put("/v1/channel-rules/TEE", json={"low_stock_threshold": 2})
    assert status == 200, body
    return Req("DELETE", "/v1/channel-rules/TEE")


def on_subscription(method: str, tail: str = "") -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        return Req(method, f"/v1/webhooks/{await world.subscription()}{tail}")

    return prepare


def on_delivery(method: str, tail: str = "") -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        sub, delivery_id = await world.delivery()
        return Req(method, f"/v1/webhooks/{sub}/deliveries/{delivery_id}{tail}")

    return prepare


HOOK = {"url": "http://127.0.0.1:9/hook", "events": ["availability.changed"], "secret": "s" * 20}
ECOMMERCE = [
    Row("ecommerce", "GET", "/v1/availability", ALL, const("GET", "/v1/availability", params={"sku": "TEE"})),
    Row("ecommerce", "GET", "/v1/availability/stream", ALL, const("GET", "/v1/availability/stream")),
    Row("ecommerce", "GET", "/v1/availability/{sku}", ALL, const("GET", "/v1/availability/TEE")),
    Row("ecommerce", "GET", "/v1/endless-aisle/{sku}", ("admin", "ops", *STORES, "shop"),
        const("GET", "/v1/endless-aisle/TEE", params={"location_id": OWN})),
    Row("ecommerce", "GET", "/v1/channel-rules", ALL, const("GET", "/v1/channel-rules")),
    Row("ecommerce", "PUT", "/v1/channel-rules", OPERATORS,
        const("PUT", "/v1/channel-rules", json={"low_stock_threshold": 3})),
    Row("ecommerce", "PUT", "/v1/channel-rules/{sku}", OPERATORS,
        const("PUT", "/v1/channel-rules/TEE", json={"low_stock_threshold": 2})),
    Row("ecommerce", "DELETE", "/v1/channel-rules/{sku}", OPERATORS, rule_to_delete),
    Row("ecommerce", "POST", "/v1/webhooks", OPERATORS, const("POST", "/v1/webhooks", json=HOOK)),
    Row("ecommerce", "GET", "/v1/webhooks", OPERATORS, const("GET", "/v1/webhooks")),
    Row("ecommerce", "GET", "/v1/webhooks/{subscription_id}", OPERATORS, on_subscription("GET")),
    Row("ecommerce", "DELETE", "/v1/webhooks/{subscription_id}", OPERATORS, on_subscription("DELETE")),
    Row("ecommerce", "GET", "/v1/webhooks/{subscription_id}/deliveries", OPERATORS,
        on_subscription("GET", "/deliveries")),
    Row("ecommerce", "GET", "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}", OPERATORS,
        on_delivery("GET")),
    Row("ecommerce", "POST", "/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/redeliver", OPERATORS,
        on_delivery("POST", "/redeliver")),
    Row("ecommerce", "POST", "/v1/shop/orders", (), shop_order(True), "signed by the shop (no API key needed)",
        cells=EVERYONE),
    Row("ecommerce", "POST", "/v1/shop/orders", (), shop_order(False), "unsigned, whatever the key",
        cells={c: "401" for c in COLUMNS}),
]


# --- finance ---------------------------------------------------------------------------------------


async def settlements(world: World, column: str) -> Req:
    return Req("POST", "/v1/settlements", json=[{
        "provider": "stripe", "external_id": world.uid("px"), "order_id": world.uid("ord"), "amount": "1.00",
        "fee": "0.00", "currency": "EUR", "settled_at": "2024-05-01T12:00:00+00:00"}])


async def closeout(world: World, column: str) -> Req:
    day = date(2023, 1, 1) + timedelta(days=next(world.counter))
    return Req("POST", "/v1/closeouts", json={"location_id": OWN, "business_day": day.isoformat(), "currency": "EUR",
                                              "tenders": [{"kind": "cash", "amount": "1.00"}]})


async def reconcile(world: World, column: str) -> Req:
    day = date(2022, 1, 1) + timedelta(days=next(world.counter))
    return Req("POST", "/v1/reconciliations", json={"business_day": day.isoformat()})


async def void_by_id(world: World, column: str) -> Req:
    [row] = await world.settle()
    settlement_id = await world.pool.fetchval(
        "SELECT id FROM finance.settlements WHERE provider = $1 AND external_id = $2",
        row["provider"], row["external_id"])
    return Req("POST", f"/v1/settlements/{settlement_id}/void", json={"reason": "matrix: wrong amount"})


async def void_by_key(world: World, column: str) -> Req:
    [row] = await world.settle()
    return Req("POST", "/v1/settlements/void", json={
        "provider": row["provider"], "external_id": row["external_id"], "reason": "matrix: wrong amount"})


def on_run(method: str, tail: str = "", json: Any = None, with_exception: bool = False) -> Prepare:
    async def prepare(world: World, column: str) -> Req:
        run = await world.run(with_exception)
        return Req(method, f"/v1/reconciliations/{run['id']}{tail}", json=json)

    return prepare


FINANCE_ROWS = [
    Row("finance", "POST", "/v1/settlements", FINANCE, settlements),
    Row("finance", "GET", "/v1/settlements", BOOKS, const("GET", "/v1/settlements")),
    Row("finance", "POST", "/v1/settlements/{settlement_id}/void", ("admin", "finance"), void_by_id),
    Row("finance", "POST", "/v1/settlements/void", ("admin", "finance"), void_by_key),
    Row("finance", "POST", "/v1/closeouts", FINANCE, closeout),
    Row("finance", "GET", "/v1/closeouts", BOOKS, const("GET", "/v1/closeouts", params={"business_day": "2024-05-01"})),
    Row("finance", "POST", "/v1/reconciliations", FINANCE, reconcile),
    Row("finance", "GET", "/v1/reconciliations", BOOKS, const("GET", "/v1/reconciliations")),
    Row("finance", "GET", "/v1/reconciliations/{run_id}", BOOKS, on_run("GET")),
    Row("finance", "GET", "/v1/reconciliations/{run_id}/items", BOOKS, on_run("GET", "/items")),
    Row("finance", "POST", "/v1/reconciliations/{run_id}/items/{item_no}/resolution", FINANCE,
        on_run("POST", "/items/1/resolution", {"action": "write_off", "reason": "matrix"}, with_exception=True)),
    Row("finance", "POST", "/v1/reconciliations/{run_id}/commit", FINANCE, on_run("POST", "/commit")),
    Row("finance", "GET", "/v1/reports/revenue", BOOKS,
        const("GET", "/v1/reports/revenue", params={"from": "2024-05-01", "to": "2024-05-02"})),
    Row("finance", "GET", "/v1/reports/revenue.csv", BOOKS,
        const("GET", "/v1/reports/revenue.csv", params={"from": "2024-05-01", "to": "2024-05-02"})),
    Row("finance", "GET", "/v1/reports/price-overrides", BOOKS,
        const("GET", "/v1/reports/price-overrides", params={"from": "2024-05-01", "to": "2024-05-02"})),
]


# --- ledger ----------------------------------------------------------------------------------------

SALE_SEQ, SUMMARY_SEQ = 0, 1
LOG_READERS = ("admin", "ops", "finance", "auditor")


def finance_signed(data_dir: Path, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An append body as finance's tools send it: the entries and finance's own signature."""
    submission = sign_submission(load_identity(data_dir, "finance"), entries)
    return {"entries": entries, "submission": submission.as_json()}


async def append(world: World, column: str) -> Req:
    return Req("POST", "/v1/ledger/entries", idem=True, json=finance_signed(world.data_dir, [
        {"kind": "reconciliation_summary", "business_day": "2024-05-02", "sales_total": "1.00",
         "entry_key": world.uid("run:")}]))


LEDGER = [
    Row("ledger", "POST", "/v1/ledger/entries", FINANCE, append),
    Row("ledger", "GET", "/v1/ledger/checkpoint", LOG_READERS, const("GET", "/v1/ledger/checkpoint")),
    Row("ledger", "GET", "/v1/ledger/entries", LOG_READERS,
        const("GET", "/v1/ledger/entries", params={"order_id": "o-1"}), "find by order id (what each may read)"),
    Row("ledger", "GET", "/v1/ledger/entries/{seq}", LOG_READERS, const("GET", f"/v1/ledger/entries/{SUMMARY_SEQ}"),
        "a reconciliation summary"),
    Row("ledger", "GET", "/v1/ledger/entries/{seq}", BOOKS, const("GET", f"/v1/ledger/entries/{SALE_SEQ}"),
        "a reconciled sale"),
    Row("ledger", "GET", "/v1/ledger/consistency", LOG_READERS,
        const("GET", "/v1/ledger/consistency", params={"first": 1, "second": 2})),
    Row("ledger", "GET", "/v1/ledger/identities", LOG_READERS, const("GET", "/v1/ledger/identities")),
    Row("ledger", "GET", "/v1/ledger/export", BOOKS, const("GET", "/v1/ledger/export", params={"from": 0, "to": 1})),
    Row("ledger", "GET", "/v1/ledger/audit", BOOKS, const("GET", "/v1/ledger/audit")),
    Row("ledger", "GET", "/v1/ledger/audit/job", BOOKS, const("GET", "/v1/ledger/audit/job")),
    Row("ledger", "GET", "/v1/ledger/revenue", BOOKS,
        const("GET", "/v1/ledger/revenue", params={"from": "2024-05-01", "to": "2024-05-31"})),
]

SYSTEM = [Row(service, "GET", path, (), const("GET", path), cells=EVERYONE)
          for service in ROUTE_MODULES for path in SYSTEM_PATHS]


# --- /v1/keys, mounted on every service by the app factory ----------------------------------------


async def key_to_revoke(world: World, column: str) -> Req:
    async with world.pool.acquire() as conn:
        key = await create_api_key(conn, "shop", label="matrix")
    key_id = await world.pool.fetchval("SELECT id FROM core.api_keys WHERE key_hash = $1", hash_key(key))
    return Req("POST", f"/v1/keys/{key_id}/revoke")


def key_rows(service: str) -> list[Row]:
    return [Row(service, "GET", "/v1/keys", ("admin",), const("GET", "/v1/keys")),
            Row(service, "POST", "/v1/keys", ("admin",),
                const("POST", "/v1/keys", json={"role": "auditor", "label": "matrix"})),
            Row(service, "POST", "/v1/keys/{key_id}/revoke", ("admin",), key_to_revoke)]


KEY_PATHS = ("/v1/keys", "/v1/keys/{key_id}/revoke")
KEY_ROWS = [row for service in ROUTE_MODULES for row in key_rows(service)]
ROWS = [*INVENTORY, *ORDERS, *ECOMMERCE, *FINANCE_ROWS, *LEDGER]


# --- the README block ------------------------------------------------------------------------------


def render() -> str:
    """The matrix as the README shows it: one line per row of ROWS, plus the routes every service has."""
    head = ["service", "call", "case", *COLUMNS]
    lines = [START, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        cells = row.expected()
        lines.append("| " + " | ".join([row.service, row.call, row.case, *(cells[c] for c in COLUMNS)]) + " |")
    for row in key_rows("every service"):
        cells = row.expected()
        lines.append("| " + " | ".join([row.service, row.call, row.case, *(cells[c] for c in COLUMNS)]) + " |")
    system = ", ".join(f"`GET {p}`" for p in SYSTEM_PATHS)
    lines.append("| every service | " + system + " | no key needed | " + " | ".join("yes" for _ in COLUMNS) + " |")
    return "\n".join([*lines, "", END])


def readme_block(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text[text.index(START):text.index(END) + len(END)]


def write_readme() -> None:
    text = README.read_text()
    block = readme_block(text)
    assert block is not None, f"README.md has no {START} ... {END} markers"
    README.write_text(text.replace(block, render()))


# --- the tests -------------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_hosts": ["127.0.0.1"],
                                       "shop_webhook_secret": SecretStr(SHOP_SECRET)})


@pytest.fixture
async def world(service: ServiceFactory, pool: asyncpg.Pool, make_key: Callable[..., Awaitable[str]],
                settings: Settings) -> AsyncIterator[World]:
    init_identities(settings.data_dir)
    apis = {name: await service(name) for name in ROUTE_MODULES}
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await apis["inventory"].put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, where in STOCK.items():
        status, resp, _ = await apis["inventory"].put(f"/v1/skus/{sku}",
                                                      json={"name": sku, "price": "10.00", "currency": "EUR"})
        assert status == 201, resp
        async with pool.acquire() as conn:
            for location_id in where:
                await inventory.apply_movement(conn, sku, location_id, "receipt", 10_000, actor="test")
    keys: dict[str, str | None] = {"admin": ADMIN_KEY, "no key": None,
                                   "store (own)": await make_key("store", OWN),
                                   "store (other)": await make_key("store", OTHER)}
    for role in ("ops", "shop", "finance", "auditor"):
        keys[role] = await make_key(role)
    world = World(apis, pool, keys, settings.data_dir)
    finance_ledger = apis["ledger"].as_key(keys["finance"])
    status, body, _ = await finance_ledger.post("/v1/ledger/entries", idem="seed", json=finance_signed(
        settings.data_dir,
        [{"kind": "reconciled_sale", "business_day": "2024-05-01", "channel": "online",
          "location_id": None, "sales_total": "1.00", "currency": "EUR", "order_id": "o-1"},
         {"kind": "reconciliation_summary", "business_day": "2024-05-01", "sales_total": "1.00"}]))
    assert status == 201, body
    assert (await finance_ledger.get("/v1/ledger/checkpoint"))[0] == 200  # cut on read
    async with open_ledger(settings, max_size=1, service="finance") as port:  # finance co-signs, exports can use it
        trust = TrustCache(msp_dir(settings.data_dir))
        assert await Cosigner(port, load_identity(settings.data_dir, "finance"), trust).cosign_latest()
    yield world


async def send(world: World, service: str, column: str, req: Req) -> tuple[int, Any]:
    headers = dict(req.headers)
    if world.keys[column] is not None:
        headers["Authorization"] = f"Bearer {world.keys[column]}"
    if req.idem:
        headers["Idempotency-Key"] = world.uid("idem-")
    resp = await world.apis[service].client.request(req.method, req.path, params=req.params, json=req.json,
                                                    data=req.data, headers=headers)
    try:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/event-stream"):
            return resp.status, None  # a stream that opened is the answer; its events are tested elsewhere
        return resp.status, await resp.json(content_type=None) if "json" in ctype else await resp.text()
    finally:
        resp.close()


# What a refused call must leave as it was. Left out: what background workers write on their own
# (the e-commerce projection and webhook fan-out, ledger checkpoints, their events) and the key table.
STATE_TABLES = (
    "inventory.locations", "inventory.skus", "inventory.stock_levels", "inventory.stock_movements",
    "orders.orders", "orders.order_lines", "orders.allocations", "orders.sales", "orders.status_history",
    "ecommerce.channel_rules", "ecommerce.webhook_subscriptions", "ecommerce.shop_orders",
    "finance.closeouts", "finance.import_batches", "finance.ledger_commits", "finance.resolutions",
    "finance.run_items", "finance.runs", "finance.settlements", "ledger.entries", "ledger.batches",
    "core.idempotency_keys",
)
STATE_QUERY = " UNION ALL ".join(
    f"SELECT '{table}', md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
    for table in STATE_TABLES
) + (" UNION ALL SELECT 'core.events', md5(coalesce(string_agg(e::text, '|' ORDER BY e.id), ''))"
     " FROM core.events e WHERE e.topic NOT LIKE 'availability.%'")


async def state(pool: asyncpg.Pool) -> dict[str, str]:
    return {table: digest for table, digest in await pool.fetch(STATE_QUERY)}


async def observe(world: World, row: Row) -> tuple[dict[str, str], list[str]]:
    cells, problems = {}, []
    for column in COLUMNS:
        req = await row.prepare(world, column)
        refused = row.expected()[column] != "yes"
        before = await state(world.pool) if refused else {}
        status, body = await send(world, row.service, column, req)
        cells[column] = "yes" if 200 <= status < 300 else str(status)
        if cells[column] != row.expected()[column]:
            problems.append(f"{row.call} {row.case}: {column} got {status} {str(body)[:300]}")
        elif refused and (after := await state(world.pool)) != before:
            changed = sorted(table for table in after if after[table] != before[table])
            problems.append(f"{row.call} {row.case}: {column} was refused ({status}) but changed {changed}")
        elif cells[column] == "yes" and row.verify is not None:
            try:
                await row.verify(world, column, body)
            except AssertionError as exc:
                problems.append(f"{row.call} {row.case}: {column}: {exc}")
    return cells, problems


@pytest.mark.parametrize("name", list(ROUTE_MODULES))
async def test_every_route_answers_every_role_as_the_matrix_says(world: World, name: str) -> None:
    problems = []
    for row in [r for r in ROWS + KEY_ROWS + SYSTEM if r.service == name]:
        problems += (await observe(world, row))[1]
    assert not problems, "\n".join(problems)


def registered_routes(service: str) -> set[tuple[str, str]]:
    table: RouteTable = import_module(ROUTE_MODULES[service]).api
    return {(r.method, r.path) for r in table.routes if r.path not in SYSTEM_PATHS + KEY_PATHS}


@pytest.mark.parametrize("name", list(ROUTE_MODULES))
def test_every_service_app_mounts_the_key_routes(name: str, settings: Settings) -> None:
    app = registry.load(name).create_app(settings)
    mounted = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    assert {(r.method, r.path) for r in key_rows(name)} <= mounted


@pytest.mark.parametrize("name", list(ROUTE_MODULES))
def test_every_registered_route_has_a_row(name: str) -> None:
    registry.load(name)  # the app module imports every routes module it mounts
    rows = {(r.method, r.path) for r in ROWS if r.service == name}
    assert registered_routes(name) - rows == set(), "routes without a row in tests/test_access_matrix.py"
    assert rows - registered_routes(name) == set(), "rows for routes that no longer exist"


def test_the_readme_shows_exactly_this_matrix() -> None:
    block = readme_block(README.read_text())
    assert block == render(), ("README.md's access matrix differs from tests/test_access_matrix.py; "
                               "run `python -m tests.test_access_matrix --write`, or paste:\n\n" + render())


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme()
    else:
        sys.stdout.write(render() + "\n")
