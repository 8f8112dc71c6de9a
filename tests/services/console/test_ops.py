"""Operations pages: refusals first (other roles, bad transfers, a webhook URL the API refuses, a half
buffer), then stock by location, the journal naming the person, transfers, rules, redelivery."""

from __future__ import annotations

import re

import asyncpg
import pytest

from shared.auth import hash_key, new_key
from tests.conftest import Api, ServiceFactory
from tests.services.console.conftest import csrf_of, sign_in

pytestmark = pytest.mark.asyncio
IDEM = re.compile(r'name="idem" value="([^"]+)"')


async def catalogue(inventory: Api) -> None:
    for location in ("store-a", "wh-1"):
        status, body, _ = await inventory.put(f"/v1/locations/{location}", json={
            "name": location.title(), "kind": "store" if location.startswith("store") else "warehouse",
            "lat": 51.5, "lon": -0.1, "ship": True, "pickup": True})
        assert status in (200, 201), body
    for sku in ("TEE-M", "CAP-1"):
        status, body, _ = await inventory.put(f"/v1/skus/{sku}", json={"name": sku, "price": "9.90", "currency": "EUR"})
        assert status in (200, 201), body
    status, body, _ = await inventory.post("/v1/stock/movements", idem="seed-1", json={
        "sku": "TEE-M", "location_id": "wh-1", "kind": "receipt", "qty": 50})
    assert status == 201, body


async def movement_count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM inventory.stock_movements"))


async def form_tokens(client, path: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    html = await (await client.get(path)).text()
    idem = IDEM.search(html)
    return csrf_of(html), idem.group(1) if idem else ""


async def test_other_roles_get_a_403_page(console_with, make_user) -> None:
    apps = await console_with("inventory", "ecommerce")
    client = apps["console"].client
    await make_user("sam", "store", location_id="store-a")
    await make_user("fay", "finance")
    for username in ("sam", "fay"):
        await sign_in(client, username)
        for path in ("/ops", "/ops/movements", "/ops/transfers", "/ops/channels", "/ops/webhooks"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 403, (username, path)
            assert "Not for this account" in await resp.text()
        csrf = csrf_of(await (await client.get("/ops")).text())  # the 403 page has the sign-out form
        post = await client.post("/ops/transfers", data={"sku": "TEE-M", "location_id": "wh-1",
                                                          "to_location_id": "store-a", "qty": "1", "csrf_token": csrf})
        assert post.status == 403, username
        client.session.cookie_jar.clear()


async def test_bad_transfers_change_nothing(console_with, make_user, pool) -> None:
    apps = await console_with("inventory", "ecommerce")
    await catalogue(apps["inventory"])
    client = apps["console"].client
    await make_user("olga", "ops")
    await sign_in(client, "olga")
    before = await movement_count(pool)
    cases = [({"sku": "TEE-M", "location_id": "wh-1", "to_location_id": "wh-1", "qty": "1"}, "to_location_id",
              "another location"),
             ({"sku": "TEE-M", "location_id": "wh-1", "to_location_id": "store-a", "qty": "0"}, "qty", None),
             ({"sku": "TEE M", "location_id": "wh-1", "to_location_id": "store-a", "qty": "1"}, "sku", None)]
    for data, field, words in cases:
        csrf, idem = await form_tokens(client, "/ops/transfers")
        resp = await client.post("/ops/transfers", data={**data, "csrf_token": csrf, "idem": idem})
        html = await resp.text()
        assert resp.status == 422, (data, resp.status)
        assert f'id="f-{field}-error"' in html and 'aria-invalid="true"' in html, field
        if words:
            assert words in html
    # The API's own refusals: more than there is, and a location that does not exist.
    for data in ({"sku": "TEE-M", "location_id": "wh-1", "to_location_id": "store-a", "qty": "500"},
                 {"sku": "TEE-M", "location_id": "wh-1", "to_location_id": "nowhere", "qty": "1"}):
        csrf, idem = await form_tokens(client, "/ops/transfers")
        resp = await client.post("/ops/transfers", data={**data, "csrf_token": csrf, "idem": idem})
        assert 400 <= resp.status < 500, (data, resp.status)
        html = await resp.text()
        assert 'role="alert"' in html
        if data["to_location_id"] == "nowhere":
            assert 'id="f-to_location_id-error"' in html, html
    assert await movement_count(pool) == before


async def test_a_transfer_is_made_once_and_the_journal_names_who(console_with, make_user, pool) -> None:
    apps = await console_with("inventory", "ecommerce")
    await catalogue(apps["inventory"])
    client = apps["console"].client
    await make_user("olga", "ops")
    await sign_in(client, "olga")
    csrf, idem = await form_tokens(client, "/ops/transfers")
    data = {"sku": "TEE-M", "location_id": "wh-1", "to_location_id": "store-a", "qty": "4", "reason": "window display",
            "csrf_token": csrf, "idem": idem}
    for _ in range(2):  # a double submit of one form moves the units once
        resp = await client.post("/ops/transfers", data=data, allow_redirects=False)
        assert resp.status == 303
    assert await pool.fetchval("SELECT count(*) FROM inventory.stock_movements WHERE kind = 'transfer'") == 2  # out, in
    journal = await (await client.get("/ops/movements", params={"sku": "TEE-M"})).text()
    assert "olga (ops)" in journal and "window display" in journal
    levels = await (await client.get("/ops", params={"location_id": "store-a"})).text()
    assert "TEE-M" in levels and "wh-1" not in levels.split("<tbody>")[1]
    await apps["inventory"].post("/v1/stock/movements", idem="cap-in", json={
        "sku": "CAP-1", "location_id": "store-a", "kind": "receipt", "qty": 1})
    await apps["inventory"].post("/v1/stock/movements", idem="cap-out", json={
        "sku": "CAP-1", "location_id": "store-a", "kind": "adjustment", "qty": -1, "reason": "damaged"})
    empty = (await (await client.get("/ops", params={"location_id": "store-a", "unavailable": "true"})).text())
    assert "CAP-1" in empty.split("<tbody>")[1] and "TEE-M" not in empty.split("<tbody>")[1]
    fragment = await client.get("/ops", params={"location_id": "store-a"}, headers={"HX-Request": "true"})
    assert (await fragment.text()).lstrip().startswith('<section id="levels"')  # only the block, for htmx


async def test_channel_rules_refuse_half_a_buffer_and_save_a_whole_one(console_with, make_user, pool) -> None:
    apps = await console_with("inventory", "ecommerce")
    await catalogue(apps["inventory"])
    client = apps["console"].client
    await make_user("olga", "ops")
    await sign_in(client, "olga")
    csrf, _ = await form_tokens(client, "/ops/channels")
    half = await client.post("/ops/channels", data={"buffer_value": "5", "csrf_token": csrf})
    assert half.status == 422 and 'id="f-buffer_value-error"' in await half.text()
    too_much = await client.post("/ops/channels", data={"sku": "TEE-M", "buffer_kind": "percent", "buffer_value": "150",
                                                        "csrf_token": csrf})
    assert too_much.status == 422  # the API's rule: a percentage is at most 100
    assert await pool.fetchval("SELECT count(*) FROM ecommerce.channel_rules") == 0
    ok = await client.post("/ops/channels", allow_redirects=False, data={
        "sku": "TEE-M", "buffer_kind": "absolute", "buffer_value": "2",
        "low_stock_threshold": "3", "csrf_token": csrf})
    assert ok.status == 303
    page = await (await client.get("/ops/channels")).text()
    assert "TEE-M" in page and "2 units" in page


async def test_webhooks_refused_url_then_subscribe_and_redeliver_a_dead_letter(
        service: ServiceFactory, make_user, pool) -> None:
    inventory = await service("inventory")
    ecommerce = await service("ecommerce")  # no private hosts allowed: the API refuses 127.0.0.1
    console = await service("console", inventory_url=str(inventory.client.make_url("")).rstrip("/"),
                            ecommerce_url=str(ecommerce.client.make_url("")).rstrip("/"))
    client = console.client
    await make_user("olga", "ops")
    await sign_in(client, "olga")
    csrf, _ = await form_tokens(client, "/ops/webhooks")
    no_events = await client.post("/ops/webhooks", data={"url": "https://hooks.example.com/x", "secret": "s" * 20,
                                                         "csrf_token": csrf})
    assert no_events.status == 422 and 'id="f-events-error"' in await no_events.text()
    private = await client.post("/ops/webhooks", data={"url": "http://127.0.0.1:9/hook", "secret": "a-long-secret-xyz",
                                                       "events": "availability.changed", "csrf_token": csrf})
    refusal = await private.text()
    assert 400 <= private.status < 500 and 'role="alert"' in refusal
    assert "127.0.0.1" in refusal or "private" in refusal or "not allowed" in refusal, refusal  # the API's reason
    assert await pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0

    made = await client.post("/ops/webhooks", data={"url": "https://hooks.example.com/x", "secret": "a-long-secret-xyz",
                                                    "events": "availability.changed", "csrf_token": csrf},
                             allow_redirects=False)
    assert made.status == 303
    sid = int(made.headers["Location"].rsplit("/", 1)[1])
    delivery = await pool.fetchval(
        "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status, attempts)"
        " VALUES ($1, 1, 'availability.changed', 'TEE-M', '\\x7b7d', 'dead', 10) RETURNING id", sid)
    dead = await (await client.get(f"/ops/webhooks/{sid}", params={"status": "dead"})).text()
    assert f"Redeliver delivery {delivery}" in dead
    swapped = await client.get(f"/ops/webhooks/{sid}", params={"status": "dead"}, headers={"HX-Request": "true"})
    fragment = await swapped.text()  # the htmx block alone, its redeliver form with the token
    assert swapped.status == 200 and fragment.lstrip().startswith('<section id="deliveries"'), fragment[:300]
    assert f"Redeliver delivery {delivery}" in fragment and 'name="csrf_token"' in fragment
    redo = await client.post(f"/ops/webhooks/{sid}/deliveries/{delivery}/redeliver", data={"csrf_token": csrf},
                             allow_redirects=False)
    assert redo.status == 303
    assert await pool.fetchval("SELECT status FROM ecommerce.webhook_deliveries WHERE id = $1", delivery) != "dead"
    missing = await client.post(f"/ops/webhooks/{sid}/deliveries/999999/redeliver", data={"csrf_token": csrf})
    assert missing.status == 404


async def test_an_order_shows_who_placed_it(console_with, make_user, pool) -> None:
    apps = await console_with("inventory", "ecommerce", "orders")
    await catalogue(apps["inventory"])
    await make_user("olga", "ops")
    key = new_key()
    await pool.fetchval("SELECT console.issue_person_key(id, $1, now() + interval '1 hour') FROM console.users",
                        hash_key(key))
    status, placed, _ = await apps["orders"].as_key(key).post("/v1/orders", idem="o-1", json={
        "channel": "online", "currency": "EUR", "lines": [{"sku": "TEE-M", "qty": 1, "unit_price": "9.90"}],
        "fulfillment": {"type": "ship", "ship_to": {"lat": 51.5, "lon": -0.12}}})
    assert status == 201, placed
    client = apps["console"].client
    await sign_in(client, "olga")
    listing = await (await client.get("/ops/orders", params={"channel": "online"})).text()
    assert placed["id"] in listing and "olga (ops)" in listing
    detail = await (await client.get(f"/ops/orders/{placed['id']}")).text()
    assert "placed" in detail and "olga (ops)" in detail
    assert (await client.get("/ops/orders/no-such-order")).status == 404
    bad = await client.get("/ops/orders", params={"status": "lost"})
    assert bad.status == 422 and 'role="alert"' in await bad.text()
