"""POST /v1/shop/orders: a Shopify-shaped orders/create body, signed by the shop, placed through the
orders domain exactly once however often it is replayed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.ecommerce.app import create_app
from services.orders import use_cases as orders
from shared.settings import Settings
from tests.conftest import Api, assert_problem
from tests.services.ecommerce.conftest import SHOP_SECRET, Channel

ORDER_ID = 820982911946154508
SHOP_TZ = timezone(timedelta(hours=-5))  # Shopify writes times in the shop's offset


def shopify_time(ago: timedelta = timedelta(0)) -> str:
    """A time as Shopify writes it: local offset, seconds."""
    return (datetime.now(UTC) - ago).astimezone(SHOP_TZ).isoformat(timespec="seconds")



def shop_order(**changes: Any) -> dict[str, Any]:
    """A small order in Shopify's orders/create shape (with some of the fields we ignore), just created."""
    now = shopify_time()
    order: dict[str, Any] = {
        "id": ORDER_ID, "name": "#9999", "email": "jon@example.com", "currency": "EUR",
        "financial_status": "paid", "taxes_included": False, "total_tax": "3.80", "total_discounts": "2.00",
        "total_price": "125.55", "created_at": now, "updated_at": now,
        "line_items": [
            {"id": 866550311766439020, "variant_id": 808950810, "title": "Tee", "sku": "TEE-M", "quantity": 2,
             "price": "19.90", "total_discount": "0.00", "properties": []},
            {"id": 141249953214522974, "variant_id": 49148385, "title": "Jeans", "sku": "JEANS-32", "quantity": 1,
             "price": "79.00", "total_discount": "0.00", "properties": []},
        ],
        "shipping_lines": [{"id": 271878346596884015, "title": "Standard", "code": "STD", "price": "4.95",
                            "discounted_price": "4.95", "tax_lines": []}],
        "shipping_address": {"city": "London", "country_code": "GB", "latitude": 51.52, "longitude": -0.10},
    }
    order.update(changes)
    return order


def sign(raw: bytes, secret: str = SHOP_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


async def post(api: Api, order: dict[str, Any] | bytes, signature: str | None = "sign") -> tuple[int, Any, Any]:
    raw = order if isinstance(order, bytes) else json.dumps(order).encode()
    headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create"}
    if signature == "sign":
        headers["X-Shopify-Hmac-Sha256"] = sign(raw)
    elif signature is not None:
        headers["X-Shopify-Hmac-Sha256"] = signature
    return await api.as_key(None).post("/v1/shop/orders", data=raw, headers=headers)


@pytest.fixture
async def stocked(channel: Channel) -> Channel:
    await channel.receive("TEE-M", "wh-1", 10)
    await channel.receive("JEANS-32", "wh-1", 3)
    return channel


async def placed_orders(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM orders.orders WHERE external_id = $1", f"shopify:{ORDER_ID}")


async def reserved(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT coalesce(sum(reserved), 0) FROM inventory.stock_levels")


async def test_a_shop_order_is_placed_through_orders_with_its_charges(stocked: Channel) -> None:
    status, body, resp = await post(stocked.ecommerce, shop_order())
    assert status == 201, body
    assert body["external_id"] == f"shopify:{ORDER_ID}" and body["status"] == "paid"
    assert body["total"] == "125.55"  # 2 x 19.90 + 79.00 + 4.95 shipping + 3.80 tax - 2.00 discount
    assert sorted((a["sku"], a["location_id"], a["qty"]) for a in body["allocations"]) == [
        ("JEANS-32", "wh-1", 1), ("TEE-M", "wh-1", 2)]
    assert "Idempotent-Replayed" not in resp.headers
    order = await orders.get_order(stocked.pool, uuid.UUID(body["order_id"]))
    assert sorted((c.kind, str(c.amount)) for c in order.charges) == [
        ("discount", "2.00"), ("shipping", "4.95"), ("tax", "3.80")]
    assert (order.channel, order.fulfillment.type, order.paid_at is not None) == ("online", "ship", True)
    assert await stocked.available("TEE-M") == 8  # the reservation reached the channel availability


async def test_a_replayed_shop_order_is_accepted_once(stocked: Channel) -> None:
    first = await post(stocked.ecommerce, shop_order())
    assert first[0] == 201
    for _ in range(3):
        status, body, resp = await post(stocked.ecommerce, shop_order())
        assert status == 200 and body == first[1] and resp.headers["Idempotent-Replayed"] == "true"
    # Shopify retries concurrently too (a slow first answer); still one order, one reservation.
    results = await asyncio.gather(*(post(stocked.ecommerce, shop_order()) for _ in range(5)))
    assert {r[0] for r in results} == {200} and {r[1]["order_id"] for r in results} == {first[1]["order_id"]}
    assert await placed_orders(stocked.pool) == 1
    assert await reserved(stocked.pool) == 3


async def test_concurrent_first_deliveries_place_one_order(stocked: Channel) -> None:
    results = await asyncio.gather(*(post(stocked.ecommerce, shop_order()) for _ in range(6)))
    assert sorted(r[0] for r in results) == [200] * 5 + [201]
    assert len({r[1]["order_id"] for r in results}) == 1
    assert await placed_orders(stocked.pool) == 1 and await reserved(stocked.pool) == 3


async def test_missing_or_wrong_signature_is_401_and_places_nothing(stocked: Channel) -> None:
    for signature in (None, "", "bm90IHRoZSBzaWduYXR1cmU=", sign(b"another body"),
                      sign(json.dumps(shop_order()).encode(), secret="another secret")):
        status, body, _ = await post(stocked.ecommerce, shop_order(), signature=signature)
        assert_problem(status, body, 401, "unauthorized")
    assert await placed_orders(stocked.pool) == 0


async def test_a_body_changed_after_signing_is_refused(stocked: Channel) -> None:
    raw = json.dumps(shop_order()).encode()
    tampered = raw.replace(b'"quantity": 2', b'"quantity": 1')
    status, body, _ = await post(stocked.ecommerce, tampered, signature=sign(raw))
    assert_problem(status, body, 401)


async def test_unknown_sku_is_a_clear_422_and_a_corrected_retry_succeeds(stocked: Channel) -> None:
    items = shop_order()["line_items"]
    bad = shop_order(line_items=[items[0], {**items[1], "sku": "NO-SUCH-SKU"}])
    status, body, _ = await post(stocked.ecommerce, bad)
    assert_problem(status, body, 422, "validation-failed", field="line_items.1.sku")
    assert "NO-SUCH-SKU" in body["errors"][0]["problem"]
    assert await placed_orders(stocked.pool) == 0 and await reserved(stocked.pool) == 0
    status, body, _ = await post(stocked.ecommerce, shop_order())
    assert status == 201, body


async def test_too_little_stock_is_409_and_nothing_is_kept(stocked: Channel) -> None:
    items = shop_order()["line_items"]
    status, body, _ = await post(stocked.ecommerce, shop_order(line_items=[{**items[1], "quantity": 50}]))
    assert_problem(status, body, 409, "insufficient-stock")
    assert await placed_orders(stocked.pool) == 0 and await reserved(stocked.pool) == 0
    assert await stocked.pool.fetchval("SELECT count(*) FROM ecommerce.shop_orders") == 0


BAD_ORDERS: list[tuple[dict[str, Any], str]] = [
    ({"id": "abc"}, "id"),
    ({"id": None}, "id"),
    ({"currency": "euro"}, "currency"),
    ({"line_items": []}, "line_items"),
    ({"line_items": [{"sku": "TEE-M", "quantity": 0, "price": "1.00"}]}, "line_items.0.quantity"),
    ({"line_items": [{"sku": "TEE-M", "quantity": 1, "price": "-1.00"}]}, "line_items.0.price"),
    ({"line_items": [{"sku": None, "quantity": 1, "price": "1.00"}]}, "line_items.0.sku"),
    ({"shipping_lines": [{"price": "abc"}]}, "shipping_lines.0.price"),
    ({"created_at": None}, "created_at"),
    ({"created_at": "2026-01-10T11:00:00"}, "created_at"),  # no offset: which day is it?
    ({"updated_at": "yesterday"}, "updated_at"),
]


async def test_bad_shop_orders_name_the_field(stocked: Channel) -> None:
    for change, field in BAD_ORDERS:
        status, body, _ = await post(stocked.ecommerce, shop_order(**change))
        assert_problem(status, body, 422, field=field)
    assert await placed_orders(stocked.pool) == 0


async def test_malformed_json_is_400(stocked: Channel) -> None:
    status, body, _ = await post(stocked.ecommerce, b"{not json")
    assert_problem(status, body, 400, "malformed-json")


async def test_without_a_configured_shop_secret_nothing_is_accepted(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"shop_webhook_secret": None}))
    async with TestClient(TestServer(app)) as client:
        status, body, _ = await post(Api(client), shop_order())
    assert_problem(status, body, 401, "unauthorized")


# --- replays: the signature covers only the body, so the window is judged on times inside it ------


async def test_a_signed_delivery_older_than_the_window_is_refused_and_creates_nothing(stocked: Channel) -> None:
    old = shopify_time(timedelta(hours=7))  # past the 6 h default: beyond Shopify's own retries
    status, body, _ = await post(stocked.ecommerce, shop_order(created_at=old, updated_at=old))
    assert_problem(status, body, 422, "stale-webhook")
    assert await placed_orders(stocked.pool) == 0 and await reserved(stocked.pool) == 0
    assert await stocked.pool.fetchval("SELECT count(*) FROM ecommerce.shop_orders") == 0


async def test_an_old_order_updated_recently_is_judged_by_its_update(stocked: Channel) -> None:
    """An order that sat unpaid for days and was just paid: its updated_at is recent, so it is fresh."""
    status, body, _ = await post(stocked.ecommerce, shop_order(created_at=shopify_time(timedelta(days=3)),
                                                               updated_at=shopify_time(timedelta(minutes=1))))
    assert status == 201, body
    status, body, _ = await post(stocked.ecommerce, shop_order(created_at=shopify_time(timedelta(days=3)),
                                                               updated_at=None, id=ORDER_ID + 1))
    assert_problem(status, body, 422, "stale-webhook")


async def test_an_accepted_delivery_sent_again_after_the_window_is_a_replay(stocked: Channel,
                                                                          settings: Settings) -> None:
    hour_ago = shopify_time(timedelta(hours=1))
    raw = json.dumps(shop_order(created_at=hour_ago, updated_at=hour_ago)).encode()
    status, first, _ = await post(stocked.ecommerce, raw)
    assert status == 201, first
    # Later: the same delivery is now outside the window (a shorter window stands in for time passing).
    app = create_app(settings.model_copy(update={"shop_webhook_max_age_s": 1800}))
    async with TestClient(TestServer(app)) as client:
        status, body, resp = await post(Api(client), raw)
        assert status == 200 and body == first and resp.headers["Idempotent-Replayed"] == "true"
        # The same order with its times brought forward, under the old signature: not Shopify's body.
        fresh = raw.replace(hour_ago.encode(), shopify_time().encode())
        assert fresh != raw
        status, body, _ = await post(Api(client), fresh, signature=sign(raw))
        assert_problem(status, body, 401, "unauthorized")
    assert await placed_orders(stocked.pool) == 1 and await reserved(stocked.pool) == 3


async def test_a_stale_delivery_of_an_order_never_accepted_stays_refused(stocked: Channel) -> None:
    """A delivery refused for want of stock cannot be replayed days later, once stock has arrived."""
    old = shopify_time(timedelta(days=2))
    order = shop_order(created_at=old, updated_at=old)
    for _ in range(2):
        status, body, _ = await post(stocked.ecommerce, order)
        assert_problem(status, body, 422, "stale-webhook")
        assert "older than" in body["detail"]
    assert await placed_orders(stocked.pool) == 0
