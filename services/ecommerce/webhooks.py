"""Outbound webhooks: subscriptions, and fan-out of availability events into delivery queues.

Fan-out is an outbox consumer like the projection: its cursor moves in the statement that enqueues
the deliveries, and only if no other fan-out moved it since the batch was read. Per (subscription,
SKU) the deliveries form a queue sent in order; sending is the dispatcher's (dispatcher.py): fan-out
leases it the messages it may send at once, in the statement that enqueues them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import asyncpg
import orjson

from services.ecommerce import domain
from services.ecommerce import webhook_repository as hooks
from services.ecommerce.delivery import refusal
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
from shared.event_stream import EventHub, next_events
from shared.outbox import Event
from shared.paging import decode_cursor, encode_cursor

CURSOR = "webhooks"
LEADERSHIP_KEY = 2  # fan-out's key among shared/leadership.py jobs (the projector's is 1)
FAMILIES = ["availability"]


# --- subscriptions ----------------------------------------------------------------------------------


async def subscribe(pool: Pool, body: SubscriptionIn, allow_list: list[str], actor: str) -> SubscriptionOut:
    if problem := refusal(body.url, allow_list):
        raise field_error("url", problem)
    async with transaction(pool) as conn:
        row = await hooks.create_subscription(conn, body.url, list(body.events), body.secret, actor, body.delivery)
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


# --- fan-out ---------------------------------------------------------------------------------------


class Holder(Protocol):
    """What fan-out asks of the dispatcher that will send the deliveries it leases (dispatcher.py)."""

    lease_s: float

    def held_tail(self, subscription_id: int, key: str) -> int | None:
        """The newest delivery of the queue this process holds in memory, if it holds the queue."""

    def reserve_tail(self, subscription_id: int, key: str, topic: str) -> int | None:
        """The held, unsent tail a new `topic` message may replace (None: none), kept off the wire until
        `fanned_out`."""

    def fanned_out(self, fan: FanOut | None) -> None:
        """Take what a committed fan-out leased and folded (None: it failed; drop the reservations)."""


@dataclass
class FanOut:
    """A committed fan-out batch: events read; deliveries leased to this process and held tails changed."""

    events: int
    live: set[int] = field(default_factory=set)  # subscriptions not deleted
    leased: list[Held] = field(default_factory=list)
    folded: dict[int, hooks.Message] = field(default_factory=dict)  # held delivery id -> what replaces it
    # Queues with a message that waits in the database behind the queue's unfinished tail (the claim's).
    queued: set[tuple[int, str]] = field(default_factory=set)


@dataclass
class Held:
    """A delivery leased to this process: what its dispatcher needs to send it."""

    id: int
    subscription_id: int
    event_id: int
    topic: str
    key: str
    body: bytes
    attempts: int
    url: str
    secret: str
    due: float  # time.time() it may leave (the coalescing window)
    event_at: float  # the event's created_at, for staleness
    batch: bool  # its subscription takes availability.batch deliveries

    @classmethod
    def of_claim(cls, row: asyncpg.Record) -> Held:
        body = bytes(row["body"])
        return cls(row["id"], row["subscription_id"], row["event_id"], row["topic"], row["key"], body,
                   row["attempts"], row["url"], row["secret"], 0.0, _created_at(body), row["delivery"] == "batch")


def _created_at(body: bytes) -> float:
    try:
        return datetime.fromisoformat(orjson.loads(body)["created_at"]).timestamp()
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return time.time()


def render_body(event: Event) -> bytes:
    return orjson.dumps({"id": event.id, "topic": event.topic, "created_at": event.created_at,
                         "data": event.payload})


async def fan_out(pool: Pool, coalesce_s: float, limit: int = 1000, *, holder: Holder | None = None,
                  hub: EventHub | None = None) -> int | None:
    """Turn the next availability events into deliveries; the number of events read (None: another
    fan-out moved the cursor first and nothing was written: read again).

    Set-based: one statement folds and enqueues the whole batch and moves the cursor, on the condition
    that the cursor is still where it was read. No transaction around the reads: the batch holds a
    transaction id (which every outbox reader's horizon waits for) only while that statement runs. With a
    `holder` (the dispatcher), messages it may send at once are leased to it in that statement and
    handed over after it, so they leave without another trip to the database; without one, every
    message is queued."""
    fan: FanOut | None = None
    try:
        async with pool.acquire() as conn:
            cursor, subscriptions = await hooks.cursor_and_subscriptions(conn, CURSOR)
            events = await next_events(conn, cursor.position, limit, FAMILIES, hub)
            if not events:
                return 0
            messages = messages_for(events, subscriptions, holder)
            lease_s = holder.lease_s if holder else None
            rows = await hooks.fan_out_messages(conn, messages, coalesce_s, lease_s, CURSOR, cursor,
                                                events[-1].position)
        if rows is None:
            return None
        fan = _handed_over(events, messages, subscriptions, rows, holder)
        return len(events)
    finally:
        if holder is not None:
            holder.fanned_out(fan)


def _handed_over(events: list[Event], messages: list[hooks.Message], subscriptions: list[asyncpg.Record],
                 rows: list[asyncpg.Record], holder: Holder | None) -> FanOut:
    """What the committed statement leased to this process and which held tails it changed."""
    fan = FanOut(len(events), {s["id"] for s in subscriptions})
    if holder is None:
        return fan
    folded_ords = {r["ord"] for r in rows if r["outcome"] == "folded"}
    for row in rows:
        if row["outcome"] == "folded" and messages[row["ord"] - 1].fold_into == row["id"]:
            fan.folded[row["id"]] = messages[row["ord"] - 1]
    # Inserted ids follow the messages' order (ORDER BY ord), and the rows come back in id order.
    queued = [m for ord_, m in enumerate(messages, 1) if ord_ not in folded_ords]
    inserted = [r for r in rows if r["outcome"] == "inserted"]
    by_id = {s["id"]: s for s in subscriptions}
    created = {e.id: e.created_at.timestamp() for e in events}
    for message, row in zip(queued, inserted, strict=True):
        if row["status"] == "pending":
            fan.queued.add((message.subscription_id, message.key))
        elif row["status"] == "sending":
            sub = by_id[message.subscription_id]
            fan.leased.append(Held(row["id"], message.subscription_id, message.event_id, message.topic,
                                   message.key, message.body, 1, sub["url"], sub["secret"],
                                   row["due"].timestamp(), created[message.event_id], sub["delivery"] == "batch"))
    return fan


def messages_for(events: list[Event], subscriptions: list[asyncpg.Record],
                 holder: Holder | None = None) -> list[hooks.Message]:
    """Each subscription's messages for `events`, in event order, rapid snapshots of a SKU collapsed.

    The first message of each queue says whether the dispatcher holds that queue and which of its unsent
    snapshots it may replace (reserved until the fan-out commits, so it cannot leave meanwhile)."""
    bodies: dict[int, bytes] = {}
    messages = []
    for sub in subscriptions:
        wanted = [e for e in events if e.topic in sub["events"] and e.created_at >= sub["created_at"]]
        seen: set[str] = set()
        for index, folded in domain.collapse_snapshots([(e.topic, e.key) for e in wanted]):
            event = wanted[index]
            body = bodies.get(event.id) or bodies.setdefault(event.id, render_body(event))
            first = event.key not in seen
            seen.add(event.key)
            held_tail = holder.held_tail(sub["id"], event.key) if holder else None
            fold_into = holder.reserve_tail(sub["id"], event.key, event.topic) \
                if holder and held_tail is not None and first else None
            messages.append(hooks.Message(sub["id"], event.id, event.topic, event.key, body, folded,
                                          first, held_tail, fold_into))
    return messages
