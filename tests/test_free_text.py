"""Every client-written text field, on every service, refuses control, bidi and separator characters
with a 422 naming the field, and stores nothing; ordinary Unicode (accents, CJK, emoji) is accepted.

Table-driven: each route's text field x a set of hostile strings. "Nothing stored" is checked on a
fingerprint of every table a request could write (not on one count per route), so a refused request
that left an idempotency record, a history row or a half-updated name would show."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from tests.conftest import Api, ServiceFactory

HOSTILE = {
    "ansi": "Soho \x1b[31mred\x1b[0m",
    "crlf": "Soho\r\nInjected",
    "rlo": "Soho\u202egpj.exe",
    "nul": "So\x00ho",
    "lri": "Soho\u2066x\u2069",
    "c1": "So\x85ho",
    "line-separator": "So\u2028ho",
}
# Written by background tasks or by authentication, not by the requests under test.
UNWATCHED = {("core", "api_keys"), ("ecommerce", "availability"), ("ecommerce", "levels"),
             ("ecommerce", "locations"), ("ecommerce", "cursors")}
_keys = itertools.count()


@dataclass(frozen=True)
class Case:
    service: str
    method: str
    path: str
    body: Callable[[str], Any]
    field: str
    role: str = "admin"


def _order(value: str) -> dict[str, Any]:
    return {"channel": "online", "external_id": value, "currency": "EUR",
            "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}], "fulfillment": {"type": "ship"}}


def _settlement(**fields: str) -> list[dict[str, Any]]:
    return [{"provider": "stripe", "external_id": "ch_1", "order_id": "o-1", "amount": "19.90",
             "currency": "EUR", "settled_at": "2026-01-01T10:00:00Z", **fields}]


def _sale(**fields: str | None) -> dict[str, Any]:
    return {"entries": [{"kind": "reconciled_sale", "business_day": "2026-01-01", "channel": "online",
                         "location_id": "s1", "sales_total": "19.90", "currency": "EUR", **fields}]}


ORDER = "{order}"  # replaced by a placed order's id
CASES = [
    Case("inventory", "PUT", "/v1/locations/new-store", lambda v: {
        "name": v, "kind": "store", "lat": 51.5, "lon": -0.1, "ship": False, "pickup": True}, "name"),
    Case("inventory", "PUT", "/v1/locations/s1", lambda v: {  # renaming an existing one
        "name": v, "kind": "store", "lat": 51.5, "lon": -0.1, "ship": True, "pickup": True}, "name"),
    Case("inventory", "PUT", "/v1/skus/NEW-SKU", lambda v: {"name": v, "price": "1.00", "currency": "EUR"}, "name"),
    Case("inventory", "PUT", "/v1/skus/TEE-M", lambda v: {"name": v, "price": "19.90", "currency": "EUR"}, "name"),
    Case("inventory", "POST", "/v1/stock/movements", lambda v: {
        "sku": "TEE-M", "location_id": "s1", "kind": "receipt", "qty": 1, "reason": v}, "reason"),
    Case("orders", "POST", "/v1/orders", _order, "external_id"),
    Case("orders", "POST", f"/v1/orders/{ORDER}/cancel", lambda v: {"reason": v}, "reason"),
    Case("orders", "POST", f"/v1/orders/{ORDER}/fulfill", lambda v: {"reason": v}, "reason"),
    Case("orders", "POST", f"/v1/orders/{ORDER}/pay", lambda v: {"provider": v}, "provider"),
    Case("orders", "POST", f"/v1/orders/{ORDER}/pay", lambda v: {"reference": v}, "reference"),
    Case("orders", "POST", f"/v1/orders/{ORDER}/returns", lambda v: {
        "lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "s1", "reason": v}, "reason"),
    Case("orders", "POST", "/v1/pos/sales", lambda v: {
        "location_id": "s1", "currency": "EUR", "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"}],
        "tenders": [{"kind": "card", "amount": "19.90", "reference": v}]}, "tenders.0.reference"),
    Case("orders", "POST", "/v1/pos/sales", lambda v: {
        "location_id": "s1", "currency": "EUR",
        "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "18.90", "price_override": {"reason": v}}],
        "tenders": [{"kind": "card", "amount": "18.90"}]}, "lines.0.price_override.reason"),
    Case("finance", "POST", "/v1/settlements", lambda v: _settlement(provider=v), "provider", "finance"),
    Case("finance", "POST", "/v1/settlements", lambda v: _settlement(external_id=v), "external_id", "finance"),
    Case("finance", "POST", "/v1/settlements", lambda v: _settlement(order_id=v), "order_id", "finance"),
    Case("finance", "POST", "/v1/settlements/void", lambda v: {
        "provider": "stripe", "external_id": "ch_1", "reason": v}, "reason", "finance"),
    Case("finance", "POST", "/v1/closeouts", lambda v: {
        "location_id": "s1", "business_day": "2026-01-01", "currency": "EUR",
        "tenders": [{"kind": "cash", "amount": "1.00"}], "note": v}, "note", "finance"),
    Case("finance", "POST", "/v1/reconciliations/1/items/1/resolution",
         lambda v: {"action": "write_off", "reason": v}, "reason", "finance"),
    Case("finance", "POST", "/v1/reconciliations/1/commit", lambda v: {"override_reason": v},
         "override_reason", "finance"),
    Case("ecommerce", "POST", "/v1/webhooks", lambda v: {
        "url": "https://example.com/hook?" + v, "events": ["availability.changed"],
        "secret": "whsec_0123456789abcdef"}, "url"),
    Case("ecommerce", "POST", "/v1/webhooks", lambda v: {
        "url": "https://example.com/hook", "events": ["availability.changed"],
        "secret": "whsec_0123456789abcdef" + v}, "secret"),
    Case("ledger", "POST", "/v1/ledger/entries", lambda v: _sale(channel=v),
         "entries.0.reconciled_sale.channel", "finance"),
    Case("ledger", "POST", "/v1/ledger/entries", lambda v: _sale(location_id=v),
         "entries.0.reconciled_sale.location_id", "finance"),
]


@dataclass
class World:
    service: ServiceFactory
    finance_key: str
    pool: asyncpg.Pool
    order_id: str = ""
    started: dict[str, Api] = field(default_factory=dict)

    async def api(self, name: str, role: str = "admin") -> Api:
        """A service started on first use (each test needs one or two of the five)."""
        if name not in self.started:
            self.started[name] = await self.service(name)
        return self.started[name] if role == "admin" else self.started[name].as_key(self.finance_key)


@pytest.fixture
async def world(service: ServiceFactory, pool: asyncpg.Pool, make_key: Callable[..., Any]) -> World:
    world = World(service, await make_key("finance"), pool)
    inventory = await world.api("inventory")
    status, body, _ = await inventory.put("/v1/locations/s1", json={
        "name": "Soho", "kind": "store", "lat": 51.5, "lon": -0.1, "ship": True, "pickup": True})
    assert status == 201, body
    status, body, _ = await inventory.put("/v1/skus/TEE-M", json={"name": "Tee", "price": "19.90", "currency": "EUR"})
    assert status == 201, body
    status, body, _ = await inventory.post("/v1/stock/movements", idem="seed", json={
        "sku": "TEE-M", "location_id": "s1", "kind": "receipt", "qty": 10})
    assert status == 201, body
    status, body, _ = await (await world.api("orders")).post("/v1/orders", idem="seed-order", json=_order("seed-1"))
    assert status == 201, body
    world.order_id = body["id"]
    return world


async def fingerprint(pool: asyncpg.Pool) -> dict[str, str]:
    """An md5 of every watched table's rows."""
    tables = await pool.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        " AND table_schema = ANY($1::text[])", ["core", "inventory", "orders", "ecommerce", "finance", "ledger"])
    out = {}
    for schema, table in ((r["table_schema"], r["table_name"]) for r in tables):
        if (schema, table) in UNWATCHED:
            continue
        # Identifiers come from the catalogue, quoted: no value is formatted into SQL.
        name = f'"{schema}"."{table}"'
        # The e-commerce projection publishes availability events of its own, whenever it catches up.
        where = " WHERE t.topic NOT LIKE 'availability.%'" if (schema, table) == ("core", "events") else ""
        out[name] = await pool.fetchval(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                                        f" FROM {name} t{where}")
    return out


async def send(world: World, case: Case, value: str) -> tuple[int, Any]:
    api = await world.api(case.service, case.role)
    path = case.path.replace(ORDER, world.order_id)
    status, body, _ = await api.request(case.method, path, json=case.body(value), idem=f"k-{next(_keys)}")
    return status, body


@pytest.mark.parametrize("case", CASES, ids=[f"{c.service}:{c.method} {c.path} {c.field}" for c in CASES])
async def test_hostile_text_is_refused_naming_the_field_and_nothing_is_stored(world: World, case: Case) -> None:
    before = await fingerprint(world.pool)
    for label, value in HOSTILE.items():
        status, body = await send(world, case, value)
        assert status == 422, (label, body)
        named = [e for e in body.get("errors", []) if e["field"] == case.field]
        assert named, (label, body)
        assert "U+" in named[0]["problem"] and "not allowed" in named[0]["problem"], (label, body)
    assert await fingerprint(world.pool) == before


def _csv(provider: str) -> bytes:
    quoted = '"' + provider.replace('"', '""') + '"'
    return (f"provider,external_id,order_id,amount,currency,settled_at\r\n"
            f"{quoted},ch_1,o-1,19.90,EUR,2026-01-01T10:00:00Z\r\n").encode()


async def test_hostile_text_in_a_settlement_csv_is_refused_by_line_and_field(world: World) -> None:
    before = await fingerprint(world.pool)
    for label, value in HOSTILE.items():
        status, body, _ = await (await world.api("finance", "finance")).post(
            "/v1/settlements", data=_csv(value), headers={"Content-Type": "text/csv"})
        assert status == 422, (label, body)
        # (A quoted CR/LF makes the row two lines long; the file reader names the line it ends on.)
        assert [(e["line"], e["field"]) for e in body["errors"]] == [(3 if "\n" in value else 2, "provider")]
        assert "U+" in body["errors"][0]["problem"], (label, body)
    assert await fingerprint(world.pool) == before


async def test_hostile_text_in_a_query_is_refused(world: World) -> None:
    status, body, _ = await (await world.api("finance", "finance")).get(
        "/v1/settlements", params={"order_id": "o\u202e1"})
    assert status == 422 and body["errors"][0]["field"] == "order_id", body


ORDINARY = ["Café Zürich-Straße", "東京 渋谷店", "Tee 👕 size M", "👨‍👩‍👧 family pack", "Ωmega “quoted” …", "العربية"]


async def test_ordinary_unicode_names_are_accepted(world: World) -> None:
    inventory = await world.api("inventory")
    for n, name in enumerate(ORDINARY):
        status, body, _ = await inventory.put(f"/v1/locations/store-{n}", json={
            "name": name, "kind": "store", "lat": 51.5, "lon": -0.1, "ship": False, "pickup": True})
        assert status == 201 and body["name"] == name, body
        status, body, _ = await inventory.put(f"/v1/skus/SKU-{n}", json={"name": name, "price": "1.00",
                                                                       "currency": "EUR"})
        assert status == 201 and body["name"] == name, body
    status, body, _ = await inventory.post("/v1/stock/movements", idem="ok", json={
        "sku": "TEE-M", "location_id": "s1", "kind": "receipt", "qty": 1, "reason": "Lieferung – ok ✓ 到着"})
    assert status == 201, body
    status, body, _ = await (await world.api("orders")).post(
        f"/v1/orders/{world.order_id}/cancel", json={"reason": "Kunde möchte 👕 nicht mehr"})
    assert status == 200, body
