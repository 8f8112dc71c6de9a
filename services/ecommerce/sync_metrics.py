"""How far behind the channel is, as Prometheus metrics (README "Real-time sync: metrics and alerts").

Counted where it happens: each webhook attempt's result and, for a delivered one, how stale its change
was (from the availability event's created_at to the receiver's answer). Sampled every
`sync_metrics_interval_s` from the database, so every replica reports the same figures: each durable
consumer's unread events and the age of the oldest (the projection, the webhook fan-out), and each
subscription's unfinished deliveries and the age of the oldest.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram

from services.ecommerce import projection, webhooks
from services.ecommerce import repository as repo
from services.ecommerce import webhook_repository as hooks
from shared.db import Pool
from shared.http.metrics import STALENESS_BUCKETS
from shared.logging import get_logger

log = get_logger("omnistock.ecommerce.metrics")

LAG_CAP = 100_000  # past this many unread events the count says "at least"; the age stays exact

WEBHOOK_ATTEMPTS = Counter("omnistock_webhook_attempts_total", "Webhook attempts by result", ["result"])
WEBHOOK_STALENESS = Histogram(
    "omnistock_webhook_staleness_seconds",
    "From an availability event's created_at to the receiver's 2xx for the delivery carrying it",
    buckets=STALENESS_BUCKETS,
)
WEBHOOK_BACKLOG = Gauge("omnistock_webhook_backlog", "Unfinished (pending or sending) deliveries",
                        ["subscription"])
WEBHOOK_OLDEST = Gauge("omnistock_webhook_oldest_unfinished_seconds",
                       "Age of the oldest unfinished delivery (0 when none)", ["subscription"])
CONSUMER_LAG_EVENTS = Gauge("omnistock_sync_unread_events",
                            f"Outbox events a consumer has not read yet (capped at {LAG_CAP})", ["consumer"])
CONSUMER_LAG_SECONDS = Gauge("omnistock_sync_lag_seconds",
                             "Age of the oldest outbox event a consumer has not read yet (0 when none)",
                             ["consumer"])

CONSUMERS = {projection.CURSOR: projection.FAMILIES, webhooks.CURSOR: webhooks.FAMILIES}


async def sample(pool: Pool) -> None:
    cursors = await repo.cursors(pool)
    for name, families in CONSUMERS.items():
        if name in cursors:
            events, oldest_s = await repo.consumer_lag(pool, cursors[name], families, LAG_CAP)
            CONSUMER_LAG_EVENTS.labels(name).set(events)
            CONSUMER_LAG_SECONDS.labels(name).set(oldest_s)
    live = set()
    for row in await hooks.backlog(pool):
        subscription = str(row["subscription_id"])
        live.add(subscription)
        WEBHOOK_BACKLOG.labels(subscription).set(row["unfinished"])
        WEBHOOK_OLDEST.labels(subscription).set(row["oldest_s"])
    for gauge in (WEBHOOK_BACKLOG, WEBHOOK_OLDEST):
        for (subscription,) in [labels for labels in list(gauge._metrics) if labels[0] not in live]:
            gauge.remove(subscription)  # a deleted subscription stops being reported


async def run_sampler(pool: Pool, interval_s: float) -> None:
    while True:
        try:
            await sample(pool)
        except Exception:  # a background loop must outlive any failure
            log.exception("sampling sync metrics failed; retrying")
        await asyncio.sleep(interval_s)
