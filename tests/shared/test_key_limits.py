"""Limits per key through the real services: a request past the bucket is a 429 that changes nothing,
another key is untouched, health checks and unknown keys never meet a bucket; a key past its stream
cap is refused before any stream byte, and a stream that ends gives its slot back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.inventory import repository as inventory
from shared.auth import hash_key
from shared.http.keys import BUCKETS, STREAMS
from shared.settings import KeyLimit, Settings
from tests.conftest import Api, ServiceFactory, assert_problem
from tests.polling import eventually
from tests.services.orders.conftest import LOCATIONS, SKUS, order_body

MakeKey = Callable[..., Awaitable[str]]
SLOW = 0.001  # tokens a second: nothing refills during a test, and Retry-After is 1,000 s


def limits(settings: Settings, role: str, **fields: Any) -> dict[str, KeyLimit]:
    return {**settings.key_limits, role: settings.key_limits[role].model_copy(update=fields)}


async def key_id(pool: asyncpg.Pool, key: str) -> int:
    return int(await pool.fetchval("SELECT id FROM core.api_keys WHERE key_hash = $1", hash_key(key)))


@pytest.fixture
async def stocked(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inv = await service("inventory")
    for location_id, body in LOCATIONS.items():
        assert (await inv.put(f"/v1/locations/{location_id}", json=body))[0] == 201
    for sku, body in SKUS.items():
        assert (await inv.put(f"/v1/skus/{sku}", json=body))[0] == 201
    async with pool.acquire() as conn:
        await inventory.apply_movement(conn, "TEE-M", "wh-1", "receipt", 100, actor="test")


async def orders_placed(pool: asyncpg.Pool) -> tuple[int, int]:
    count = await pool.fetchval("SELECT count(*) FROM orders.orders")
    reserved = await pool.fetchval("SELECT coalesce(sum(reserved), 0) FROM inventory.stock_levels")
    return count, reserved


async def test_an_order_past_the_keys_burst_is_429_with_retry_after_and_places_nothing(
        stocked: None, service: ServiceFactory, settings: Settings, make_key: MakeKey, pool: asyncpg.Pool) -> None:
    orders = await service("orders", key_limits=limits(settings, "shop", per_s=SLOW, burst=3))
    shop = orders.as_key(await make_key("shop"))
    for n in range(3):
        status, body, resp = await shop.post("/v1/orders", json=order_body(), idem=f"ok-{n}")
        assert status == 201, body
        assert resp.headers["RateLimit-Policy"] == '"per-key";q=3;w=3000'
        assert resp.headers["RateLimit"].startswith(f'"per-key";r={2 - n};')
    before = await orders_placed(pool)
    status, body, resp = await shop.post("/v1/orders", json=order_body(), idem="one-too-many")
    assert_problem(status, body, 429, "rate-limited")
    assert resp.headers["Retry-After"] == "1000" and body["retry_after_s"] == 1000
    assert await orders_placed(pool) == before == (3, 3)
    # Refused before the handler: the Idempotency-Key was never claimed, so a retry later is a first try.
    assert await pool.fetchval("SELECT count(*) FROM core.idempotency_keys WHERE key = 'one-too-many'") == 0


async def test_another_key_of_the_same_role_is_not_affected(
        stocked: None, service: ServiceFactory, settings: Settings, make_key: MakeKey) -> None:
    orders = await service("orders", key_limits=limits(settings, "shop", per_s=SLOW, burst=1))
    first, second = orders.as_key(await make_key("shop")), orders.as_key(await make_key("shop"))
    assert (await first.post("/v1/orders", json=order_body(), idem="a"))[0] == 201
    assert (await first.post("/v1/orders", json=order_body(), idem="b"))[0] == 429
    status, body, _ = await second.post("/v1/orders", json=order_body(), idem="c")
    assert status == 201, body


async def test_a_key_refused_by_its_role_still_spends_its_bucket(
        service: ServiceFactory, settings: Settings, make_key: MakeKey) -> None:
    inv = await service("inventory", key_limits=limits(settings, "auditor", per_s=SLOW, burst=2))
    auditor = inv.as_key(await make_key("auditor"))
    for sku in ("A", "B"):
        status, body, _ = await auditor.put(f"/v1/skus/{sku}", json=SKUS["TEE-M"])
        assert_problem(status, body, 403)
    status, body, _ = await auditor.put("/v1/skus/C", json=SKUS["TEE-M"])
    assert_problem(status, body, 429, "rate-limited")


async def test_unknown_keys_are_401_and_get_no_bucket_and_health_checks_are_never_limited(
        service: ServiceFactory, settings: Settings) -> None:
    inv = await service("inventory", key_limits=limits(settings, "admin", per_s=SLOW, burst=1))
    for n in range(20):
        status, body, _ = await inv.as_key(f"osk_random_{n}").get("/v1/locations")
        assert_problem(status, body, 401)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        for _ in range(3):
            status, body, resp = await inv.as_key(None).get(path)
            assert status == 200, (path, body)
            assert "RateLimit" not in resp.headers
    assert len(inv.client.app[BUCKETS]) == 0
    assert (await inv.get("/v1/locations"))[0] == 200  # the admin's one token, untouched by all of the above
    assert (await inv.get("/v1/locations"))[0] == 429


# --- live streams -------------------------------------------------------------------------------


async def open_stream(api: Api, key: str) -> Any:
    """A live /v1/events stream, past its `retry:` preamble; the caller closes it."""
    resp = await api.client.get("/v1/events", headers={"Authorization": f"Bearer {key}"})
    if resp.status == 200:
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    return resp


async def test_the_stream_past_the_keys_cap_is_refused_before_any_byte_and_a_closed_one_frees_its_slot(
        service: ServiceFactory, settings: Settings, make_key: MakeKey, pool: asyncpg.Pool) -> None:
    inv = await service("inventory", key_limits=limits(settings, "ops", streams=2))
    key, other = await make_key("ops"), await make_key("ops")
    slots = inv.client.app[STREAMS]
    streams = [await open_stream(inv, key) for _ in range(2)]
    assert [s.status for s in streams] == [200, 200]
    refused = await open_stream(inv, key)
    assert refused.status == 429 and refused.content_type == "application/problem+json"
    body = await refused.json()
    assert_problem(refused.status, body, 429, "too-many-streams")
    assert slots.open_for(await key_id(pool, key)) == 2
    another = await open_stream(inv, other)  # another key has slots of its own
    assert another.status == 200
    another.close()
    other_id = await key_id(pool, other)

    streams[0].close()  # the client goes away: the server notices at the next heartbeat at the latest

    async def reopened() -> Any:
        resp = await open_stream(inv, key)
        if resp.status == 200:
            return resp
        resp.close()
        return None

    streams[0] = await eventually(reopened)
    assert slots.open_for(await key_id(pool, key)) == 2
    for stream in streams:
        stream.close()
    mine = await key_id(pool, key)

    async def all_freed() -> bool:
        return slots.open_for(mine) == 0 and slots.open_for(other_id) == 0

    await eventually(all_freed)


async def test_stopping_the_server_frees_every_slot(service: ServiceFactory, make_key: MakeKey,
                                                    pool: asyncpg.Pool) -> None:
    inv = await service("inventory")
    key = await make_key("ops")
    streams = [await open_stream(inv, key) for _ in range(3)]
    assert all(s.status == 200 for s in streams)
    slots = inv.client.app[STREAMS]
    assert slots.open_for(await key_id(pool, key)) == 3
    await inv.client.close()  # the handlers are cancelled mid-stream
    assert slots.open_for(await key_id(pool, key)) == 0
