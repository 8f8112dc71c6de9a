"""E-commerce's housekeeping: the webhook delivery log and the outbox behind its consumer cursors."""

from __future__ import annotations

import asyncpg

from services.ecommerce.retention import WebhookDeliveries
from shared.housekeeping import prune
from tests.conftest import Api, ServiceFactory, assert_problem
from tests.polling import eventually
from tests.services.ecommerce.conftest import LOCATIONS, SKUS

DAY = 86_400.0
DELIVERIES = WebhookDeliveries(delivered_s=7 * DAY, dead_s=30 * DAY)


async def _subscription(pool: asyncpg.Pool) -> int:
    return await pool.fetchval(
        "INSERT INTO ecommerce.webhook_subscriptions (url, events, secret) VALUES"
        " ('http://127.0.0.1:9/hooks', '{availability.changed}', 'ssssssssssssssssssss') RETURNING id")


async def _delivery(pool: asyncpg.Pool, subscription_id: int, status: str, created_days: float,
                    finished_days: float | None = None) -> int:
    """A delivery created `created_days` ago and finished (delivered, or last tried) `finished_days` ago,
    with one logged attempt."""
    delivery_id = await pool.fetchval(
        "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status, attempts,"
        " created_at, next_attempt_at, delivered_at, lease_until)"
        " VALUES ($1, 1, 'availability.changed', 'TEE-M', '{}', $2, 1, now() - make_interval(days => $3),"
        "         now() - make_interval(secs => $4 * 86400),"
        "         CASE WHEN $2 = 'delivered' THEN now() - make_interval(secs => $4 * 86400) END,"
        "         CASE WHEN $2 = 'sending' THEN now() + interval '1 minute' END)"
        " RETURNING id",
        subscription_id, status, int(created_days), finished_days if finished_days is not None else created_days)
    await pool.execute("INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms)"
                       " VALUES ($1, 1, now(), 1.0)", delivery_id)
    return delivery_id


async def _left(pool: asyncpg.Pool) -> tuple[set[int], set[int]]:
    deliveries = {r["id"] for r in await pool.fetch("SELECT id FROM ecommerce.webhook_deliveries")}
    attempts = {r["delivery_id"] for r in await pool.fetch("SELECT delivery_id FROM ecommerce.webhook_attempts")}
    return deliveries, attempts


async def test_finished_deliveries_leave_after_their_windows_and_unsent_ones_never(pool: asyncpg.Pool) -> None:
    sub = await _subscription(pool)
    # (status, created days ago, finished days ago, pruned?) in id order: the walk, two rows at a time,
    # must step over kept rows (a dead letter, unsent ones) to reach the doomed ones behind them.
    cases = [("dead", 11, 10, False),  # a dead letter stays 30 days, for a redelivery
             ("dead", 41, 40, True),
             ("pending", 40, 40, False),  # still being retried: never pruned, however old
             ("delivered", 9, 8, True),
             ("sending", 40, 40, False),
             ("cancelled", 8, 8, True),
             ("delivered", 7, 6, False),
             ("delivered", 0, 0.001, False)]
    ids = [await _delivery(pool, sub, status, created, finished) for status, created, finished, _ in cases]
    kept = [i for i, case in zip(ids, cases, strict=True) if not case[3]]
    assert await prune(pool, DELIVERIES, limit=2) == 3
    assert await _left(pool) == (set(kept), set(kept))
    assert await prune(pool, DELIVERIES, limit=2) == 0


async def test_a_redelivered_dead_letter_stays_until_it_is_finished_again(
        service: ServiceFactory, pool: asyncpg.Pool) -> None:
    ecommerce = await service("ecommerce", webhook_allow_hosts=["127.0.0.1"])
    sub = await _subscription(pool)
    dead = await _delivery(pool, sub, "dead", 41, 40)
    status, body, _ = await ecommerce.post(f"/v1/webhooks/{sub}/deliveries/{dead}/redeliver")
    assert status in (200, 202), body
    await pool.execute("UPDATE ecommerce.webhook_deliveries SET status = 'pending' WHERE id = $1", dead)
    assert await prune(pool, DELIVERIES, limit=10) == 0
    assert dead in (await _left(pool))[0]


async def _stream_status(api: Api, last_event_id: str) -> tuple[int, object]:
    resp = await api.client.get("/v1/availability/stream", headers={
        "Authorization": f"Bearer {api.key}", "Last-Event-ID": last_event_id})
    try:
        return resp.status, (await resp.json(content_type=None) if resp.status != 200 else None)
    finally:
        resp.close()


async def test_the_service_prunes_the_outbox_on_its_timer_once_both_consumers_have_passed_it(
        service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inventory = await service("inventory")
    ecommerce = await service("ecommerce", housekeeping_interval_s=0.2, event_retention_s=1.0,
                              projection_poll_interval_s=0.1, webhook_poll_interval_s=0.1)
    for location_id, body in LOCATIONS.items():
        assert (await inventory.put(f"/v1/locations/{location_id}", json=body))[0] == 201
    for sku, body in SKUS.items():
        assert (await inventory.put(f"/v1/skus/{sku}", json=body))[0] == 201
    status, moved, _ = await inventory.post("/v1/stock/movements", idem="r1", json={
        "sku": "TEE-M", "location_id": "wh-1", "kind": "receipt", "qty": 3})
    assert status == 201, moved
    first = await pool.fetchval("SELECT min(id) FROM core.events")

    async def all_gone() -> bool:
        return not await pool.fetchval("SELECT count(*) FROM core.events")

    # The projector and the fan-out pass every event; a second later the timer prunes them all.
    await eventually(all_gone, within_s=20)
    status, body = await _stream_status(ecommerce, str(first))
    assert_problem(status, body, 410, "stream-resync-required")
    assert "GET /v1/availability" in body["snapshot"]  # type: ignore[index]

    # The timer keeps going: the next change's events leave the same way (a consumer that lags keeps
    # them: tests/shared/test_housekeeping.py).
    status, _, _ = await inventory.post("/v1/stock/movements", idem="r2", json={
        "sku": "TEE-M", "location_id": "wh-1", "kind": "receipt", "qty": 2})
    assert status == 201
    await eventually(lambda: pool.fetchval("SELECT count(*) FROM core.events"), within_s=5)
    await eventually(all_gone, within_s=20)
