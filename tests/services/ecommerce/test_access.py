"""The role matrix (documented in services/ecommerce/routes.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import assert_problem
from tests.services.ecommerce.conftest import Channel

ROLES = ["admin", "ops", "store", "shop", "finance", "auditor"]
READS = ["/v1/availability?sku=TEE-M", "/v1/availability/TEE-M", "/v1/channel-rules"]
HOOK = {"url": "http://127.0.0.1:9/hooks", "events": ["availability.changed"], "secret": "s" * 20}


async def key_for(make_key: Callable[..., Awaitable[str]], role: str) -> str:
    return await make_key(role, "store-a" if role == "store" else None)


async def test_no_key_or_an_unknown_key_is_401(channel: Channel) -> None:
    for key in (None, "osk_not_a_real_key"):
        for path in [*READS, "/v1/webhooks", "/v1/endless-aisle/TEE-M?location_id=store-a"]:
            status, body, _ = await channel.ecommerce.as_key(key).get(path)
            assert_problem(status, body, 401, "unauthorized")
        status, body, _ = await channel.ecommerce.as_key(key).post("/v1/webhooks", json=HOOK)
        assert_problem(status, body, 401, "unauthorized")


async def test_every_role_reads_availability(channel: Channel, make_key: Callable[..., Awaitable[str]]) -> None:
    for role in ROLES:
        api = channel.ecommerce.as_key(await key_for(make_key, role))
        for path in READS:
            status, body, _ = await api.get(path)
            assert status == 200, (role, path, body)


async def test_endless_aisle_is_for_tills_the_shop_and_operators(
    channel: Channel, make_key: Callable[..., Awaitable[str]]
) -> None:
    for role in ROLES:
        api = channel.ecommerce.as_key(await key_for(make_key, role))
        status, body, _ = await api.get("/v1/endless-aisle/TEE-M", params={"location_id": "store-a"})
        assert status == (403 if role in ("finance", "auditor") else 200), (role, body)


@pytest.mark.parametrize("role,allowed", [("admin", True), ("ops", True), ("store", False), ("shop", False),
                                          ("finance", False), ("auditor", False)])
async def test_only_admin_and_ops_manage_webhooks_and_channel_rules(
    channel: Channel, make_key: Callable[..., Awaitable[str]], role: str, allowed: bool
) -> None:
    api = channel.ecommerce.as_key(await key_for(make_key, role))
    status, body, _ = await api.post("/v1/webhooks", json=HOOK)
    assert status == (201 if allowed else 403), body
    status, body, _ = await api.get("/v1/webhooks")
    assert status == (200 if allowed else 403), body
    status, body, _ = await api.put("/v1/channel-rules/TEE-M", json={"low_stock_threshold": 2})
    assert status == (200 if allowed else 403), body
    status, body, _ = await api.put("/v1/channel-rules", json={"low_stock_threshold": 2})
    assert status == (200 if allowed else 403), body
    if not allowed:
        assert_problem(status, body, 403, "forbidden")
        assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0
        assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.channel_rules") == 0


async def test_the_stream_needs_a_key(channel: Channel, make_key: Callable[..., Awaitable[str]]) -> None:
    status, body, _ = await channel.ecommerce.as_key(None).get("/v1/availability/stream")
    assert_problem(status, body, 401)
    resp = await channel.ecommerce.client.get(
        "/v1/availability/stream", headers={"Authorization": f"Bearer {await make_key('shop')}"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    resp.close()
