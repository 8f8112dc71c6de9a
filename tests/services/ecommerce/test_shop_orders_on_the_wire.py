"""The shop's webhook is verified over its whole body however the body arrives: a correctly signed
order sent in two parts was once refused 401, its signature checked against the first part only."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_problem
from tests.services.ecommerce.conftest import Channel
from tests.services.ecommerce.test_shop_orders import ORDER_ID, placed_orders, shop_order, sign
from tests.wire import LAST_CHUNK, Wire, chunk, exchange, halves, head

PATH = "/v1/shop/orders"


def shop_headers(raw: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": sign(raw)}


@pytest.fixture
async def stocked(channel: Channel) -> Channel:
    await channel.receive("TEE-M", "wh-1", 10)
    await channel.receive("JEANS-32", "wh-1", 3)
    return channel


async def test_a_signed_order_sent_in_two_parts_is_accepted(stocked: Channel) -> None:
    shop = stocked.ecommerce.as_key(None)
    raw = json.dumps(shop_order()).encode()
    answer = await exchange(shop, "POST", PATH, raw, *halves(raw), headers=shop_headers(raw), pause_s=0.3)
    assert answer.status == 201, answer.body
    assert answer.json()["external_id"] == f"shopify:{ORDER_ID}"
    assert await placed_orders(stocked.pool) == 1


async def test_a_signed_order_sent_chunked_is_accepted(stocked: Channel) -> None:
    shop = stocked.ecommerce.as_key(None)
    raw = json.dumps(shop_order()).encode()
    wire = await Wire.open(shop)
    try:
        await wire.send(head("POST", PATH, shop, shop_headers(raw), chunked=True),
                        chunk(raw[:40]), chunk(raw[40:200]), chunk(raw[200:]) + LAST_CHUNK, pause_s=0.2)
        answer = await wire.answer()
    finally:
        wire.close()
    assert answer.status == 201, answer.body
    assert await placed_orders(stocked.pool) == 1


async def test_a_signature_over_part_of_the_body_is_still_refused(stocked: Channel) -> None:
    """The whole body is what is verified: signing only what comes first does not pass."""
    shop = stocked.ecommerce.as_key(None)
    raw = json.dumps(shop_order()).encode()
    first, rest = halves(raw)
    answer = await exchange(shop, "POST", PATH, raw, first, rest,
                            headers={**shop_headers(raw), "X-Shopify-Hmac-Sha256": sign(first)}, pause_s=0.3)
    assert_problem(answer.status, answer.json(), 401, "unauthorized")
    assert await placed_orders(stocked.pool) == 0


async def test_an_over_limit_chunked_shop_body_is_413(stocked: Channel) -> None:
    shop = stocked.ecommerce.as_key(None)
    padding = b" " * 65536
    wire = await Wire.open(shop)
    try:
        await wire.send(head("POST", PATH, shop, shop_headers(b"{}"), chunked=True))
        await wire.send_while_open(*[chunk(padding)] * 48, LAST_CHUNK)  # 3 MiB
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 413, "payload-too-large")
    assert await placed_orders(stocked.pool) == 0
