"""Opt-in batched delivery: many SKUs' changes in one signed availability.batch POST.

A batch holds at most one change per SKU and at most `webhook_batch_max` changes; it succeeds or fails
as a whole, and a failed one is retried without any SKU's later change overtaking its earlier one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from shared.settings import Settings
from tests.conftest import assert_problem
from tests.polling import eventually
from tests.services.ecommerce.conftest import Channel, Received, Receiver, signed_correctly, subscribe

BATCH_MAX = 3
SKUS = [f"SOCK-{n}" for n in range(7)]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # One request at a time: while the first is held, everything else waits ready and leaves in batches.
    return settings.model_copy(update={"webhook_concurrency": 1, "webhook_batch_max": BATCH_MAX})


def changes(request: Received) -> list[dict[str, Any]]:
    body = request.json
    assert body["topic"] == "availability.batch" and request.headers["X-Omnistock-Event"] == "availability.batch"
    return body["changes"]


async def add_skus(channel: Channel) -> None:
    for sku in SKUS:
        status, body, _ = await channel.inventory.put(f"/v1/skus/{sku}", json={"name": sku, "price": "4.00",
                                                                                 "currency": "EUR"})
        assert status == 201, body


async def hold_first(receiver: Receiver, answers: list[int]) -> asyncio.Event:
    """The first request waits for the returned event; request n is answered answers[n] (then 200)."""
    release = asyncio.Event()

    async def respond(request: Received) -> int:
        n = len(receiver.requests) - 1
        if n == 0:
            await release.wait()
        return answers[n] if n < len(answers) else 200

    receiver.respond = respond
    return release


async def all_delivered(pool: asyncpg.Pool, n: int) -> list[asyncpg.Record] | None:
    rows = await pool.fetch("SELECT key, status, attempts FROM ecommerce.webhook_deliveries ORDER BY id")
    return rows if len(rows) >= n and all(r["status"] == "delivered" for r in rows) else None


async def test_a_batch_subscription_gets_many_skus_in_one_signed_post(channel: Channel, receiver: Receiver) -> None:
    await add_skus(channel)
    release = await hold_first(receiver, [])
    sub = await subscribe(channel, receiver, delivery="batch")
    status, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}")
    assert status == 200 and body["delivery"] == "batch"
    await channel.receive(SKUS[0], "wh-1", 1)
    await eventually(lambda: _at_least(receiver.requests, 1))  # on the wire, held
    for n, sku in enumerate(SKUS[1:], start=2):
        await channel.receive(sku, "wh-1", n)
    await channel.settled()
    await eventually(lambda: _ready_in_memory(channel.pool, len(SKUS)))
    release.set()
    rows = await eventually(lambda: all_delivered(channel.pool, len(SKUS)))
    assert {r["key"] for r in rows} == set(SKUS) and all(r["attempts"] == 1 for r in rows)

    sizes = [len(changes(r)) for r in receiver.requests]
    assert sizes[0] == 1 and max(sizes) == BATCH_MAX and sum(sizes) == len(SKUS), sizes
    for request in receiver.requests:
        assert signed_correctly(request)
        got = changes(request)
        skus = [c["data"]["sku"] for c in got]
        assert len(skus) == len(set(skus))  # one change per SKU in a batch
        assert request.headers["X-Omnistock-Event-Id"] == ",".join(str(c["id"]) for c in got)
        assert len(request.headers["X-Omnistock-Delivery-Id"].split(",")) == len(got)
        assert all(c["topic"] == "availability.changed" and set(c) == {"id", "topic", "created_at", "data"}
                   for c in got)
    latest = {c["data"]["sku"]: c["data"]["available"] for r in receiver.requests for c in changes(r)}
    assert latest == {sku: n for n, sku in enumerate(SKUS, start=1)}


async def test_a_failed_batch_is_retried_whole_and_no_sku_is_overtaken(channel: Channel, receiver: Receiver) -> None:
    await add_skus(channel)
    release = await hold_first(receiver, [200, 500])  # the second request (a whole batch) fails once
    await subscribe(channel, receiver, delivery="batch")
    await channel.receive(SKUS[0], "wh-1", 1)
    await eventually(lambda: _at_least(receiver.requests, 1))
    for sku in SKUS[1:4]:
        await channel.receive(sku, "wh-1", 1)
    await channel.settled()
    await eventually(lambda: _ready_in_memory(channel.pool, 4))
    release.set()
    await eventually(lambda: _at_least(receiver.requests, 2))
    failed = {c["data"]["sku"] for c in changes(receiver.requests[1])}
    for sku in failed:  # newer changes of the failed batch's SKUs, while their retry waits
        await channel.receive(sku, "wh-1", 10)
    await channel.settled()
    await eventually(lambda: all_delivered(channel.pool, 4 + len(failed)))

    seen: dict[str, list[tuple[int, int]]] = {}
    for request in receiver.requests:
        for change in changes(request):
            seen.setdefault(change["data"]["sku"], []).append((change["id"], change["data"]["available"]))
    for sku in failed:
        ids = [event_id for event_id, _ in seen[sku]]
        # The failed change twice (the batch, then its retry), then the newer one: in order, never overtaken.
        assert ids[0] == ids[1] and ids == sorted(ids) and seen[sku][-1][1] == 11, seen[sku]
    attempts = {r["key"]: r["attempts"] for r in await channel.pool.fetch(
        "SELECT key, max(attempts) AS attempts FROM ecommerce.webhook_deliveries GROUP BY key")}
    assert all(attempts[sku] == 2 for sku in failed)


@pytest.mark.parametrize("delivery", ["bulk", "", 1, None, ["batch"]])
async def test_an_unknown_delivery_mode_is_refused_and_creates_nothing(channel: Channel, receiver: Receiver,
                                                                       delivery: Any) -> None:
    status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={
        "url": receiver.url, "events": ["availability.changed"], "secret": "s" * 16, "delivery": delivery})
    assert_problem(status, body, 422, "validation-failed", field="delivery")
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0


async def _at_least(items: list[Any], n: int) -> list[Any] | None:
    return items if len(items) >= n else None


async def _ready_in_memory(pool: asyncpg.Pool, n: int) -> bool:
    # Fan-out has leased them all to the dispatcher (or queued them): they wait for the held request.
    return await pool.fetchval("SELECT count(*) FROM ecommerce.webhook_deliveries") >= n
