"""Outbound webhooks: subscriptions, fan-out of availability events into delivery queues, dispatch.

Fan-out is an outbox consumer like the projection (cursor moved in the same transaction as the
deliveries it enqueues). Dispatch claims the head of each (subscription, SKU) queue, sends it outside
any transaction, and records the outcome: delivered, retried later with exponential backoff and
jitter, or dead-lettered after `webhook_max_attempts`. At-least-once: a dispatcher that dies mid-send
leaves a lease that expires, and the message is sent again (receivers dedupe on the event id).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import asyncpg
import orjson

from services.ecommerce import domain
from services.ecommerce import repository as repo
from services.ecommerce import webhook_repository as hooks
from services.ecommerce.background import stop, wait_for_wake
from services.ecommerce.delivery import Outcome, Sender, refusal
from services.ecommerce.schemas import (
    DeliveryDetail,
    DeliveryList,
    DeliveryOut,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from shared.db import Pool, transaction
from shared.errors import Conflict, NotFound, field_error
from shared.event_stream import EventHub
from shared.logging import get_logger
from shared.outbox import Event, read_after
from shared.paging import decode_cursor, encode_cursor
from shared.settings import Settings

log = get_logger("omnistock.ecommerce.webhooks")

CURSOR = "webhooks"
FAMILIES = ["availability"]
_jitter = random.SystemRandom()


# --- subscriptions ----------------------------------------------------------------------------------


async def subscribe(pool: Pool, body: SubscriptionIn, allow_list: list[str], actor: str) -> SubscriptionOut:
    if problem := refusal(body.url, allow_list):
        raise field_error("url", problem)
    async with transaction(pool) as conn:
        row = await hooks.create_subscription(conn, body.url, list(body.events), body.secret, actor)
    return SubscriptionOut.model_validate(dict(row))


async def subscriptions(pool: Pool) -> SubscriptionList:
    return SubscriptionList(items=[SubscriptionOut.model_validate(dict(r))
                                   for r in await hooks.list_subscriptions(pool)])


async def subscription(pool: Pool, subscription_id: int) -> SubscriptionOut:
    row = await hooks.get_subscription(pool, subscription_id)
    if row is None:
        raise NotFound(f"no webhook subscription {subscription_id}")
    return SubscriptionOut.model_validate(dict(row))


async def unsubscribe(pool: Pool, subscription_id: int) -> SubscriptionOut:
    async with transaction(pool) as conn:
        row = await hooks.delete_subscription(conn, subscription_id)
    if row is None:
        raise NotFound(f"no webhook subscription {subscription_id}")
    return SubscriptionOut.model_validate(dict(row))


async def deliveries(pool: Pool, subscription_id: int, status: str | None, cursor: str | None,
                     limit: int) -> DeliveryList:
    """The log newest first by id (unique), strictly before the previous page's last delivery."""
    before = decode_cursor("webhook_deliveries", cursor, (int,))[0] if cursor else None
    await subscription(pool, subscription_id)
    rows = await hooks.list_deliveries(pool, subscription_id, status, before, limit)
    items = [DeliveryOut.model_validate(dict(r)) for r in rows]
    last = items[-1] if len(items) == limit else None
    return DeliveryList(items=items, next_cursor=encode_cursor("webhook_deliveries", [last.id]) if last else None)


async def delivery(pool: Pool, subscription_id: int, delivery_id: int) -> DeliveryDetail:
    row = await hooks.get_delivery(pool, subscription_id, delivery_id)
    if row is None:
        raise NotFound(f"no delivery {delivery_id} of webhook subscription {subscription_id}")
    attempts = [dict(a) for a in await hooks.attempts_of(pool, delivery_id)]
    return DeliveryDetail.model_validate({**dict(row), "log": attempts})


async def redeliver(pool: Pool, subscription_id: int, delivery_id: int) -> DeliveryOut:
    await subscription(pool, subscription_id)
    async with transaction(pool) as conn:
        found = await hooks.get_delivery(conn, subscription_id, delivery_id)
        if found is None:
            raise NotFound(f"no delivery {delivery_id} of webhook subscription {subscription_id}")
        row = await hooks.redeliver(conn, delivery_id)
    if row is None:
        raise Conflict(f"delivery {delivery_id} is {found['status']}; only delivered or dead ones are sent again")
    return DeliveryOut.model_validate(dict(row))


# --- fan-out ----------------------------------------------------------------------------------------


def render_body(event: Event) -> bytes:
    return orjson.dumps({"id": event.id, "topic": event.topic, "created_at": event.created_at,
                         "data": event.payload})


async def fan_out(pool: Pool, coalesce_s: float, limit: int = 1000) -> int | None:
    """Turn the next availability events into deliveries; the number of events read (None: locked).

    Set-based: whatever the batch size, one statement folds snapshots into the tails of their queues and
    one enqueues the rest (per event and subscription it was two round trips, and fan-out fell behind)."""
    async with transaction(pool) as conn:
        position = await repo.lock_cursor(conn, CURSOR, wait=False)
        if position is None:
            return None
        events = await read_after(conn, position, limit, FAMILIES)
        if not events:
            return 0
        messages = messages_for(events, await hooks.live_subscriptions(conn))
        # Only the first message of a queue in this batch can meet the queue's tail from earlier batches
        # (collapse_snapshots already folded consecutive snapshots within the batch).
        heads: dict[tuple[int, str], hooks.Message] = {}
        for message in messages:
            heads.setdefault((message.subscription_id, message.key), message)
        folded = await hooks.coalesce_into_tails(conn, [m for m in heads.values()
                                                         if m.topic == domain.COALESCABLE_TOPIC])
        await hooks.enqueue_many(conn, [m for m in messages if not (
            heads[(m.subscription_id, m.key)] is m and (m.subscription_id, m.key) in folded)], coalesce_s)
        await repo.save_cursor(conn, CURSOR, events[-1].position)
    return len(events)


def messages_for(events: list[Event], subscriptions: list[asyncpg.Record]) -> list[hooks.Message]:
    """Each subscription's messages for `events`, in event order, rapid snapshots of a SKU collapsed."""
    messages = []
    for sub in subscriptions:
        wanted = [e for e in events if e.topic in sub["events"] and e.created_at >= sub["created_at"]]
        for index, folded in domain.collapse_snapshots([(e.topic, e.key) for e in wanted]):
            event = wanted[index]
            messages.append(hooks.Message(sub["id"], event.id, event.topic, event.key, render_body(event), folded))
    return messages


# --- dispatch ---------------------------------------------------------------------------------------


def headers_for(row: asyncpg.Record, now: float) -> dict[str, str]:
    # Signed per attempt: a retry carries its own time, so receivers can keep a short tolerance.
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        "X-Omnistock-Signature": domain.signature(row["secret"], timestamp, bytes(row["body"])),
        "X-Omnistock-Event-Id": str(row["event_id"]),
        "X-Omnistock-Event": row["topic"],
        "X-Omnistock-Delivery-Id": str(row["id"]),
        "X-Omnistock-Attempt": str(row["attempts"]),
        "X-Omnistock-Timestamp": str(timestamp),  # the signature's t, for receivers that log it
    }


async def deliver_one(pool: Pool, sender: Sender, settings: Settings, row: asyncpg.Record) -> Outcome:
    started = datetime.now(UTC)
    outcome = await sender.send(row["url"], bytes(row["body"]), headers_for(row, time.time()))
    attempt = row["attempts"]
    retry_in = None if outcome.ok or attempt >= settings.webhook_max_attempts else domain.backoff_s(
        attempt, settings.webhook_backoff_base_s, settings.webhook_backoff_max_s, _jitter.random())
    await hooks.record_outcome(pool, row["id"], attempt, started, outcome.duration_ms, outcome.status_code,
                               outcome.error, outcome.ok, retry_in)
    if not outcome.ok:
        log.info("webhook attempt failed", delivery_id=row["id"], attempt=attempt, error=outcome.error)
    return outcome


class Dispatcher:
    """Background tasks: fan-out, and sending with up to `webhook_concurrency` deliveries in flight.

    Two loops, not one: sending in the gaps of a fan-out loop held sends to one claim per fan-out batch
    (~200/s on a busy machine) while events kept arriving faster than that."""

    def __init__(self, pool: Pool, hub: EventHub, settings: Settings) -> None:
        self.pool, self.hub, self.settings = pool, hub, settings
        self.sender = Sender(settings)
        self.events_arrived = asyncio.Event()  # the hub saw availability events: fan out
        self.send_wake = asyncio.Event()  # deliveries were queued or a send finished: claim
        self.in_flight: set[asyncio.Task[Outcome]] = set()

    async def run(self) -> None:
        await self.sender.start()
        loops = [asyncio.create_task(self._listen(), name="ecommerce-webhooks-wake"),
                 asyncio.create_task(self._fan_out_loop(), name="ecommerce-webhooks-fan-out"),
                 asyncio.create_task(self._send_loop(), name="ecommerce-webhooks-send")]
        try:
            await asyncio.gather(*loops)
        finally:
            # An interrupted send stays 'sending' until its lease runs out, then goes again (at-least-once).
            for task in (*loops, *self.in_flight):
                await stop(task)
            await self.sender.close()

    async def _fan_out_loop(self) -> None:
        while True:
            timeout = self.settings.webhook_poll_interval_s
            try:
                if await fan_out(self.pool, self.settings.webhook_coalesce_s):
                    self.send_wake.set()
                    timeout = 0.0  # more may be waiting: the next batch at once
            except Exception:  # a background loop must outlive any failure
                log.exception("webhook fan-out failed; retrying")
            await wait_for_wake(self.events_arrived, timeout)
            self.events_arrived.clear()

    async def _send_loop(self) -> None:
        while True:
            timeout = self.settings.webhook_poll_interval_s
            try:
                await self._claim()
                due = await hooks.next_due_in_s(self.pool)
                if due is not None:
                    timeout = min(timeout, max(due, 0.005))
            except Exception:  # a background loop must outlive any failure
                log.exception("webhook dispatch failed; retrying")
            await wait_for_wake(self.send_wake, timeout)
            self.send_wake.clear()

    async def _listen(self) -> None:
        async for _ in self.hub.follow_batches(self.hub.head, FAMILIES,
                                               heartbeat_s=self.settings.webhook_poll_interval_s):
            self.events_arrived.set()

    async def _claim(self) -> None:
        room = self.settings.webhook_concurrency - len(self.in_flight)
        if room <= 0:
            return
        lease_s = self.settings.webhook_timeout_s + 30.0
        async with transaction(self.pool) as conn:
            rows = await hooks.claim_due(conn, room, lease_s)
        for row in rows:
            task = asyncio.create_task(deliver_one(self.pool, self.sender, self.settings, row))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Outcome]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook delivery task failed", error=repr(task.exception()))
        self.send_wake.set()  # a finished head may unblock the next message of its SKU
