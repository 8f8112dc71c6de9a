"""The store associate's pages against the real services: refusals first (another role, bad quantities,
another store's units, an unknown location), then the SKU page, its live relay, reserving elsewhere
and the pick-up queue."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from services import registry
from shared.http.runner import ServiceRunner
from shared.settings import Settings
from tests.conftest import Api, ServiceTestServer
from tests.services.console.conftest import csrf_of, sign_in

pytestmark = pytest.mark.asyncio

STORES = {
    "store-1": {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": True, "pickup": True},
    "store-2": {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True},
}
IDEM = re.compile(r'name="idem" value="([^"]+)"')


async def stack(console_with: Any, make_user: Any) -> dict[str, Api]:
    """Two stores, two SKUs with stock at both, and sam of store-1 signed in."""
    apps = await console_with("inventory", "orders", "ecommerce")
    inventory = apps["inventory"]
    for location_id, body in STORES.items():
        assert (await inventory.put(f"/v1/locations/{location_id}", json=body))[0] == 201
    for sku, name in (("TEE-M", "Tee M"), ("JEANS-32", "Jeans 32")):
        assert (await inventory.put(f"/v1/skus/{sku}", json={"name": name, "price": "19.90",
                                                             "currency": "EUR"}))[0] == 201
        for location_id, qty in (("store-1", 5), ("store-2", 7)):
            status, body, _ = await inventory.post("/v1/stock/movements", idem=f"{sku}-{location_id}", json={
                "sku": sku, "location_id": location_id, "kind": "receipt", "qty": qty})
            assert status == 201, body
    await make_user("sam", "store", location_id="store-1")
    await make_user("cam", "store", location_id="store-2")
    await make_user("olga", "ops")
    assert (await sign_in(apps["console"].client, "sam")).status == 303
    return apps


async def level(pool: asyncpg.Pool, sku: str, location_id: str) -> tuple[int, int]:
    row = await pool.fetchrow("SELECT on_hand, reserved FROM inventory.stock_levels WHERE sku = $1 AND"
                              " location_id = $2", sku, location_id)
    return (row["on_hand"], row["reserved"]) if row else (0, 0)


async def movements(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM inventory.stock_movements"))


async def form_tokens(client: TestClient, path: str) -> dict[str, str]:
    html = await (await client.get(path)).text()
    found = IDEM.search(html)
    return {"csrf_token": csrf_of(html), **({"idem": found.group(1)} if found else {})}


async def post_form(client: TestClient, page: str, action: str, **fields: str) -> ClientResponse:
    return await client.post(action, data={**await form_tokens(client, page), **fields}, allow_redirects=False)


def field_error(html: str, name: str) -> str:
    found = re.search(rf'id="f-{name}-error" class="field-error">([^<]+)<', html)
    assert found, f"no error next to {name}"
    return found.group(1)


async def test_other_roles_get_403_and_signed_out_visitors_go_to_sign_in(console_with: Any, make_user: Any
                                                                        ) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    client.session.cookie_jar.clear()
    assert (await client.get("/store/sku/TEE-M", allow_redirects=False)).status == 303
    assert (await sign_in(client, "olga")).status == 303
    for path in ("/store", "/store/sku/TEE-M", "/store/pickups", "/store/sku/TEE-M/events"):
        resp = await client.get(path)
        assert resp.status == 403, path
        assert "Not for this account" in await resp.text()


async def test_bad_quantities_are_refused_beside_the_field_and_nothing_moves(console_with: Any, make_user: Any,
                                                                           pool: asyncpg.Pool) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    before = await movements(pool)
    page = "/store/sku/TEE-M"
    for fields, name in (({"kind": "receipt", "qty": "-3"}, "qty"), ({"kind": "receipt", "qty": "0"}, "qty"),
                         ({"kind": "count", "qty": "many"}, "qty"), ({"kind": "transfer", "qty": "2"},
                                                                     "to_location_id"),
                         ({"kind": "steal", "qty": "2"}, "kind")):
        resp = await post_form(client, page, f"{page}/movements", **fields)
        assert resp.status == 422, fields
        assert field_error(await resp.text(), name)
    # The API's own refusals: an unknown destination, more than is here, an unknown SKU.
    resp = await post_form(client, page, f"{page}/movements", kind="transfer", qty="2", to_location_id="nowhere")
    assert resp.status == 422 and "nowhere" in field_error(await resp.text(), "to_location_id")
    resp = await post_form(client, page, f"{page}/movements", kind="transfer", qty="99", to_location_id="store-2")
    assert resp.status == 409 and "insufficient" in (await resp.text()).lower()
    resp = await post_form(client, page, "/store/sku/NO-SUCH/movements", kind="receipt", qty="1")
    assert resp.status in (404, 422)
    assert await movements(pool) == before
    assert await level(pool, "TEE-M", "store-1") == (5, 0)


async def test_movements_happen_here_only_and_name_the_person(console_with: Any, make_user: Any,
                                                             pool: asyncpg.Pool) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    page = "/store/sku/TEE-M"
    html = await (await client.get(page)).text()
    assert "at store-1" in html and 'name="location_id"' not in html  # the browser never names "here"
    # A forged location field is ignored: the movement is at the session's store.
    resp = await post_form(client, page, f"{page}/movements", kind="receipt", qty="3", location_id="store-2")
    assert resp.status == 303 and resp.headers["Location"] == f"{page}?recorded=receipt"
    assert await level(pool, "TEE-M", "store-1") == (8, 0) and await level(pool, "TEE-M", "store-2") == (7, 0)
    resp = await post_form(client, page, f"{page}/movements", kind="transfer", qty="2", to_location_id="store-2")
    assert resp.status == 303
    resp = await post_form(client, page, f"{page}/movements", kind="count", qty="4")
    assert resp.status == 303
    assert await level(pool, "TEE-M", "store-1") == (4, 0) and await level(pool, "TEE-M", "store-2") == (9, 0)
    actors = await pool.fetch("SELECT DISTINCT actor FROM inventory.stock_movements"
                              " WHERE kind IN ('transfer', 'count') OR (kind = 'receipt' AND on_hand_delta = 3)")
    assert {r["actor"] for r in actors} == {actors[0]["actor"]} and actors[0]["actor"].startswith("store:")
    assert actors[0]["actor"].split(":", 2)[2] == "sam"


async def test_search_finds_by_code_or_name_and_answers_htmx_with_the_results_only(console_with: Any,
                                                                                  make_user: Any) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    resp = await client.get("/store", params={"q": "jeans"}, headers={"HX-Request": "true"})
    html = await resp.text()
    assert resp.status == 200 and "JEANS-32" in html and "TEE-M" not in html and "<html" not in html
    full = await (await client.get("/store", params={"q": "tee"})).text()
    assert "<html" in full and "/store/sku/TEE-M" in full
    resp = await client.get("/store", params={"q": "x" * 101}, headers={"HX-Request": "true"})
    assert resp.status == 422 and "field-error" in await resp.text()


async def test_the_sku_page_shows_here_nearby_and_online(console_with: Any, make_user: Any) -> None:
    apps = await stack(console_with, make_user)
    resp = await apps["console"].client.get("/store/sku/TEE-M")
    html = await resp.text()
    assert resp.status == 200
    assert re.search(r'id="here-on-hand">5<', html) and re.search(r'id="here-available"><strong>5<', html)
    assert 'id="nearby-store-2"' in html and "Camden" in html and "Reserve for pick-up at Camden" in html
    assert 'id="online-available"' in html
    assert 'sse-connect="/store/sku/TEE-M/events"' in html and 'sse-swap="announce"' in html
    assert (await apps["console"].client.get("/store/sku/NO-SUCH")).status == 404


async def read_events(resp: ClientResponse, wanted: int) -> list[tuple[str, str]]:
    """The next `wanted` SSE events (name, data) from a relay."""
    events: list[tuple[str, str]] = []
    name, data = "message", []
    async with asyncio.timeout(10):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if data:
                    events.append((name, "\n".join(data)))
                    if len(events) == wanted:
                        return events
                name, data = "message", []
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
    return events


async def open_relay(client: TestClient, sku: str) -> tuple[ClientResponse, str]:
    """A page's relay, once it has sent the page's figures as they are (its first event)."""
    resp = await client.get(f"/store/sku/{sku}/events")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    [(name, block)] = await read_events(resp, 1)
    assert name == "stock"
    await asyncio.sleep(0.3)  # its upstream stream is open
    return resp, block


def nearby_available(block: str, location_id: str) -> int | None:
    found = re.search(rf'id="nearby-{location_id}">\s*<th scope="row">[^<]*</th>\s*<td>[0-9.]+</td>\s*<td>(\d+)</td>',
                      block)
    return int(found.group(1)) if found else None


def online_available(block: str) -> int:
    found = re.search(r'id="online-available">(\d+)', block)
    assert found, block
    return int(found.group(1))


async def test_the_relay_delivers_its_sku_and_not_another(console_with: Any, make_user: Any) -> None:
    apps = await stack(console_with, make_user)
    client, inventory = apps["console"].client, apps["inventory"]
    resp, first = await open_relay(client, "TEE-M")
    assert nearby_available(first, "store-2") == 7
    for sku, qty in (("JEANS-32", 3), ("TEE-M", 2)):  # another SKU's change first: it must not come through
        status, body, _ = await inventory.post("/v1/stock/movements", idem=f"live-{sku}", json={
            "sku": sku, "location_id": "store-2", "kind": "receipt", "qty": qty})
        assert status == 201, body
        await asyncio.sleep(0.3)  # each change its own burst: a leaked one would be announced on its own
    events = await read_events(resp, 2)
    assert [name for name, _ in events] == ["stock", "announce"]
    stock, said = events[0][1], events[1][1]
    assert "JEANS" not in stock and nearby_available(stock, "store-2") == 9, stock
    assert said == "Stock at Camden changed to 9 available."
    resp.close()


async def test_a_change_at_a_store_the_page_does_not_list_and_online_stock_follow(
        console_with: Any, make_user: Any) -> None:
    apps = await stack(console_with, make_user)
    client, inventory = apps["console"].client, apps["inventory"]
    body = {**STORES["store-2"], "name": "Islington", "lat": 51.5362}
    assert (await inventory.put("/v1/locations/store-3", json=body))[0] == 201
    resp, first = await open_relay(client, "TEE-M")
    assert nearby_available(first, "store-3") is None and "Islington" not in first
    status, body, _ = await inventory.post("/v1/stock/movements", idem="new-store", json={
        "sku": "TEE-M", "location_id": "store-3", "kind": "receipt", "qty": 6})
    assert status == 201, body
    events = await read_events(resp, 2)
    assert nearby_available(events[0][1], "store-3") == 6  # the page was read again: a new row
    assert events[1] == ("announce", "Stock at Islington changed to 6 available.")
    # A change at a listed store is put on the page from the event alone; e-commerce's figure follows
    # through its projection, and the page is read again shortly after the change.
    await asyncio.sleep(1.0)  # the projection has the first change
    online_now = (await apps["ecommerce"].get("/v1/availability/TEE-M"))[1]["available"]
    status, body, _ = await inventory.post("/v1/stock/movements", idem="listed-store", json={
        "sku": "TEE-M", "location_id": "store-2", "kind": "receipt", "qty": 2})
    assert status == 201, body
    online = online_now
    async with asyncio.timeout(10):
        while online != online_now + 2:  # store-2 ships: online has 2 more
            [(name, block)] = await read_events(resp, 1)
            online = online_available(block) if name == "stock" else online
    resp.close()


async def test_the_relay_ends_when_the_session_ends(console_with: Any, make_user: Any) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    resp, _ = await open_relay(client, "TEE-M")
    page = await (await client.get("/store")).text()
    assert (await client.post("/sign-out", data={"csrf_token": csrf_of(page)}, allow_redirects=False)).status == 303
    async with asyncio.timeout(10):
        while await resp.content.readany():
            pass
    assert resp.content.at_eof()


async def test_reserve_for_pick_up_at_another_store_in_two_taps(console_with: Any, make_user: Any,
                                                                pool: asyncpg.Pool) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    html = await (await client.get("/store/sku/TEE-M")).text()
    tap = re.search(r'href="(/store/sku/TEE-M/reserve\?mode=pickup&amp;at=store-2)"', html)
    assert tap, html
    page = tap.group(1).replace("&amp;", "&")
    confirm = await client.get(page)
    assert "Reserve for pick-up at Camden" in await confirm.text()
    bad = await post_form(client, page, "/store/sku/TEE-M/reserve", mode="pickup", at="store-2", qty="0")
    assert bad.status == 422 and field_error(await bad.text(), "qty")
    too_many = await post_form(client, page, "/store/sku/TEE-M/reserve", mode="pickup", at="store-2", qty="50")
    assert too_many.status == 409 and "not enough stock of TEE-M" in await too_many.text()
    assert await level(pool, "TEE-M", "store-2") == (7, 0)
    tokens = await form_tokens(client, page)
    resp = await client.post("/store/sku/TEE-M/reserve", data={**tokens, "mode": "pickup", "at": "store-2",
                                                               "qty": "2"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/store/orders/")
    again = await client.post("/store/sku/TEE-M/reserve", data={**tokens, "mode": "pickup", "at": "store-2",
                                                                "qty": "2"}, allow_redirects=False)
    assert again.headers["Location"] == resp.headers["Location"]  # a double tap places one order
    order = await (await client.get(resp.headers["Location"])).text()
    order_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert order_id in order and re.search(r'id="order-status">placed<', order)
    assert await level(pool, "TEE-M", "store-2") == (7, 2)


async def test_ship_to_customer_from_a_nearby_store(console_with: Any, make_user: Any, pool: asyncpg.Pool) -> None:
    apps = await stack(console_with, make_user)
    client = apps["console"].client
    page = "/store/sku/JEANS-32/reserve?mode=ship&at=store-2"
    assert "Ship to customer from Camden" in await (await client.get(page)).text()
    resp = await post_form(client, page, "/store/sku/JEANS-32/reserve", mode="ship", at="store-2", qty="1",
                           customer_ref="WEB-1001")
    assert resp.status == 303, await resp.text()
    order = await (await client.get(resp.headers["Location"])).text()
    assert "Ships from" in order and "store-2" in order
    assert await level(pool, "JEANS-32", "store-2") == (7, 1)


async def place_pickup(orders: Api, location_id: str, qty: int, key: str) -> str:
    status, body, _ = await orders.post("/v1/orders", idem=key, json={
        "channel": "online", "currency": "EUR", "lines": [{"sku": "TEE-M", "qty": qty, "unit_price": "19.90"}],
        "fulfillment": {"type": "pickup", "location_id": location_id}})
    assert status == 201, body
    return str(body["id"])


async def test_the_pick_up_queue_hands_over_and_rejects_with_a_reason(console_with: Any, make_user: Any,
                                                                      pool: asyncpg.Pool) -> None:
    apps = await stack(console_with, make_user)
    client, orders = apps["console"].client, apps["orders"]
    handed, rejected = await place_pickup(orders, "store-1", 1, "p1"), await place_pickup(orders, "store-1", 2, "p2")
    elsewhere = await place_pickup(orders, "store-2", 1, "p3")
    queue = await (await client.get("/store/pickups")).text()
    assert handed in queue and rejected in queue and elsewhere not in queue
    assert await level(pool, "TEE-M", "store-1") == (5, 3)
    # Another store's order: the API refuses this store's key, and the page says so.
    for action in ("handover", "reject"):
        resp = await post_form(client, "/store/pickups", f"/store/pickups/{elsewhere}/{action}", reason="no")
        assert resp.status == 403, action
        assert "store-1" in await resp.text() or "location" in await resp.text()
    assert await level(pool, "TEE-M", "store-2") == (7, 1)
    # Rejecting needs a reason.
    resp = await post_form(client, "/store/pickups", f"/store/pickups/{rejected}/reject", reason="  ")
    assert resp.status == 422 and f'id="reason-{rejected}-error"' in await resp.text()
    assert await level(pool, "TEE-M", "store-1") == (5, 3)
    resp = await post_form(client, "/store/pickups", f"/store/pickups/{rejected}/reject", reason="damaged box")
    assert resp.status == 303 and resp.headers["Location"] == "/store/pickups?done=reject"
    assert await level(pool, "TEE-M", "store-1") == (5, 1)  # its two units are free again
    status, body, _ = await orders.get(f"/v1/orders/{rejected}")
    assert body["status"] == "cancelled"
    # Prepared, ready at the counter (the customer can be told), paid there, handed over: closed.
    assert "to prepare" in queue
    for stage, shown in (("preparing", "being prepared"), ("ready", "ready at the counter")):
        resp = await post_form(client, "/store/pickups", f"/store/pickups/{handed}/{stage}")
        assert resp.status == 303, stage
        assert shown in await (await client.get("/store/pickups")).text()
    resp = await post_form(client, "/store/pickups", f"/store/pickups/{elsewhere}/ready")
    assert resp.status == 403  # another store's order: the API refuses, nothing recorded
    status, body, _ = await orders.get(f"/v1/orders/{elsewhere}")
    assert body["pickup_stage"] is None
    assert (await post_form(client, "/store/pickups", f"/store/pickups/{handed}/pay")).status == 303
    assert (await post_form(client, "/store/pickups", f"/store/pickups/{handed}/handover")).status == 303
    status, body, _ = await orders.get(f"/v1/orders/{handed}")
    assert body["status"] == "completed"
    assert [h["event"] for h in body["history"]][:3] == ["placed", "pickup_preparing", "pickup_ready"]
    assert await level(pool, "TEE-M", "store-1") == (4, 0)
    queue = await (await client.get("/store/pickups")).text()
    assert handed not in queue and rejected not in queue


class ServedLikeProduction(ServiceTestServer):
    """`omnistock serve` does not cancel a handler when its client goes away (aiohttp's test server does):
    the relay itself has to notice."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ServiceRunner(self.app, **{**kwargs, "handler_cancellation": False})


async def test_a_closed_page_gives_its_upstream_stream_back(console_with: Any, make_user: Any,
                                                           settings: Settings) -> None:
    """A store key has 16 upstream streams: pages closed by the dozen must not use them up."""
    apps = await stack(console_with, make_user)
    inventory = apps["inventory"]
    urls = {f"{name}_url": str(apps[name].client.make_url("")).rstrip("/") for name in ("inventory", "ecommerce")}
    app = registry.load("console").create_app(settings.model_copy(update=urls))
    async with TestClient(ServedLikeProduction(app)) as client:
        assert (await sign_in(client, "sam")).status == 303
        pages = [await client.get("/store/sku/TEE-M/events") for _ in range(16)]
        assert {p.status for p in pages} == {200}
        await asyncio.sleep(0.5)  # every relay holds its upstream stream now
        for p in pages:
            p.close()
        await asyncio.sleep(2.5)  # each relay notices its browser is gone within a second
        resp, _ = await open_relay(client, "TEE-M")
        status, body, _ = await inventory.post("/v1/stock/movements", idem="after-close", json={
            "sku": "TEE-M", "location_id": "store-1", "kind": "receipt", "qty": 1})
        assert status == 201, body
        events = await read_events(resp, 2)
        assert events[1:] == [("announce", "Stock at this store changed to 6 available.")], events
        resp.close()
