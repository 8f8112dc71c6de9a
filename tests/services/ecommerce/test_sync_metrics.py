"""The sync metrics an operator alerts on: lag of each consumer, backlog and staleness of webhooks."""

from __future__ import annotations

import asyncpg
from prometheus_client import REGISTRY

from services.ecommerce import sync_metrics
from services.ecommerce import webhook_repository as hooks
from services.ecommerce.webhooks import fan_out
from shared.db import transaction
from shared.outbox import publish_many
from tests.polling import eventually
from tests.services.ecommerce.conftest import Channel, Receiver, subscribe


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_lag_and_backlog_show_a_channel_falling_behind_and_catching_up(pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", ["availability.changed"],
                                               "s" * 16, "t"))["id"]
        await publish_many(conn, [("availability.changed", f"S{i}", {"sku": f"S{i}"}) for i in range(3)])
        await publish_many(conn, [("stock.changed", "S0", {"sku": "S0", "location_id": "x"})])
    await pool.execute("UPDATE core.events SET created_at = now() - interval '40 seconds'")
    await pool.execute("UPDATE ecommerce.webhook_subscriptions SET created_at = now() - interval '1 minute'")
    await sync_metrics.sample(pool)
    assert gauge("omnistock_sync_unread_events", consumer="webhooks") == 3
    assert gauge("omnistock_sync_unread_events", consumer="availability") == 1
    assert 39 < (gauge("omnistock_sync_lag_seconds", consumer="webhooks") or 0) < 120
    assert gauge("omnistock_webhook_backlog", subscription=str(sub)) == 0

    assert await fan_out(pool, coalesce_s=0.0) == 3  # read, but not delivered: the backlog moves over
    await sync_metrics.sample(pool)
    assert gauge("omnistock_sync_unread_events", consumer="webhooks") == 0
    assert gauge("omnistock_sync_lag_seconds", consumer="webhooks") == 0
    assert gauge("omnistock_webhook_backlog", subscription=str(sub)) == 3

    await pool.execute("UPDATE ecommerce.webhook_subscriptions SET deleted_at = now()")
    await sync_metrics.sample(pool)
    assert gauge("omnistock_webhook_backlog", subscription=str(sub)) is None  # gone, not stuck at 3


async def test_a_delivered_change_is_counted_with_its_staleness(channel: Channel, receiver: Receiver) -> None:
    delivered = gauge("omnistock_webhook_attempts_total", result="delivered") or 0
    observed = gauge("omnistock_webhook_staleness_seconds_count") or 0
    await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 3)

    async def counted() -> bool:
        return (gauge("omnistock_webhook_attempts_total", result="delivered") or 0) > delivered

    await eventually(counted)
    assert (gauge("omnistock_webhook_staleness_seconds_count") or 0) > observed
    status, text, _ = await channel.ecommerce.get("/metrics")
    assert status == 200 and "omnistock_webhook_staleness_seconds_bucket" in text
