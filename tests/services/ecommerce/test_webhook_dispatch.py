"""The dispatcher's hot path and what it hands back to the database.

Fan-out leases a message to the process when nothing of its queue is unfinished (or the process holds
the queue), and queues it behind anything unfinished otherwise; a failed head takes the messages behind
it back to the database, where they leave in order after its retry; a deleted subscription's held
messages are dropped, not sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from services.ecommerce import repository as repo
from services.ecommerce import webhook_repository as hooks
from services.ecommerce import webhooks
from services.ecommerce.webhooks import FanOut, fan_out
from shared.db import transaction
from shared.outbox import publish_many
from tests.polling import eventually
from tests.services.ecommerce.conftest import Channel, Received, Receiver, subscribe

CHANGED = "availability.changed"


class RecordingHolder:
    """The dispatcher's side of fan-out, reduced to what this test decides: which queues it holds and
    which held tail it offers to replace; it records what the committed batch handed over."""

    lease_s = 30.0

    def __init__(self, held: dict[tuple[int, str], int], tails: dict[tuple[int, str], int]) -> None:
        self.held, self.tails = held, tails
        self.handed: list[FanOut | None] = []

    def held_tail(self, subscription_id: int, key: str) -> int | None:
        return self.held.get((subscription_id, key))

    def reserve_tail(self, subscription_id: int, key: str, topic: str) -> int | None:
        return self.tails.get((subscription_id, key))

    def fanned_out(self, fan: FanOut | None) -> None:
        self.handed.append(fan)


async def statuses(pool: asyncpg.Pool) -> dict[str, list[tuple[str, int, int]]]:
    """sku -> [(status, attempts, event id)] in queue order."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    for row in await pool.fetch("SELECT key, status, attempts, event_id FROM ecommerce.webhook_deliveries ORDER BY id"):
        found.setdefault(row["key"], []).append((row["status"], row["attempts"], row["event_id"]))
    return found


async def publish(pool: asyncpg.Pool, *skus: str) -> None:
    async with transaction(pool) as conn:
        await publish_many(conn, [(CHANGED, sku, {"sku": sku, "available": 1}) for sku in skus])


async def test_fan_out_leases_only_what_may_leave_at_once(pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED], "s" * 16, "t"))["id"]
    await publish(pool, "RETRYING", "HELD")
    assert await fan_out(pool, coalesce_s=0.0) == 2  # no holder: both queued, nothing leased
    await pool.execute("UPDATE ecommerce.webhook_deliveries SET status = 'sending', attempts = 1"
                       " WHERE key = 'HELD'")  # this process holds HELD's queue and sends its head
    held_head = await pool.fetchval("SELECT id FROM ecommerce.webhook_deliveries WHERE key = 'HELD'")

    await publish(pool, "FREE", "RETRYING", "HELD")
    holder = RecordingHolder({(sub, "HELD"): held_head}, {})
    assert await fan_out(pool, coalesce_s=0.0, holder=holder) == 3
    [fan] = holder.handed
    assert fan is not None and {h.key for h in fan.leased} == {"FREE", "HELD"}
    assert all(h.attempts == 1 and h.url == "https://a.example/h" for h in fan.leased)
    found = await statuses(pool)
    assert [s for s, _, _ in found["FREE"]] == ["sending"]  # nothing of its queue unfinished: leased
    # A queue with an untried message in the database folds the snapshot into it and leases nothing.
    assert [(s, a) for s, a, _ in found["RETRYING"]] == [("pending", 0)]
    assert [(s, a) for s, a, _ in found["HELD"]] == [("sending", 1), ("sending", 1)]

    # The holder offers HELD's unsent tail: the next snapshot replaces it instead of queueing.
    tail = max(h.id for h in fan.leased if h.key == "HELD")
    await publish(pool, "HELD")
    holder = RecordingHolder({(sub, "HELD"): tail}, {(sub, "HELD"): tail})
    assert await fan_out(pool, coalesce_s=0.0, holder=holder) == 1
    [fan] = holder.handed
    assert fan is not None and fan.leased == [] and list(fan.folded) == [tail]
    newest = await pool.fetchval("SELECT max(id) FROM core.events")
    assert await pool.fetchval("SELECT event_id FROM ecommerce.webhook_deliveries WHERE id = $1", tail) == newest
    assert await pool.fetchval("SELECT event_id FROM ecommerce.webhook_deliveries WHERE id = $1",
                               held_head) != newest  # the head on the wire is never changed

    # Another replica queued a message behind our held tail meanwhile: holding the queue is not enough,
    # what comes next waits behind that message instead of overtaking it.
    await pool.execute("INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body)"
                       " VALUES ($1, $2, $3, 'HELD', '{}')", sub, newest, CHANGED)
    async with transaction(pool) as conn:
        await publish_many(conn, [("availability.low_stock", "HELD", {"sku": "HELD"})])
    await pool.execute("UPDATE ecommerce.webhook_subscriptions SET events = events || '{availability.low_stock}'")
    holder = RecordingHolder({(sub, "HELD"): tail}, {})
    assert await fan_out(pool, coalesce_s=0.0, holder=holder) == 1
    [fan] = holder.handed
    assert fan is not None and fan.leased == []
    assert [s for s, _, _ in (await statuses(pool))["HELD"]][-2:] == ["pending", "pending"]


async def test_a_failed_head_keeps_what_follows_it_until_its_retry_is_delivered(channel: Channel,
                                                                                receiver: Receiver) -> None:
    release, calls = asyncio.Event(), 0

    async def fail_first_tee(request: Received) -> int:
        nonlocal calls
        if request.json["data"]["sku"] != "TEE-M":
            return 200
        calls += 1
        if calls == 1:
            await release.wait()
            return 500
        return 200

    receiver.respond = fail_first_tee
    await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 1)
    await eventually(lambda: _at_least(receiver.of("TEE-M"), 1))  # the head is on the wire, held
    for i in range(3):
        await channel.move(f"more-{i}", sku="TEE-M", location_id="wh-1", kind="receipt", qty=1)
        await channel.settled()
    # Every change fanned out (the follower waits behind the head, in memory) before the head fails: a
    # change fanned out after its retry was delivered would be a message of its own, rightly.
    await eventually(lambda: _fanned_out(channel.pool))
    release.set()
    await eventually(lambda: _last_available(receiver, "TEE-M", 4))
    tee = [(r.json["id"], r.json["data"]["available"]) for r in receiver.of("TEE-M")]
    # The head twice (500, then its retry), and only then what followed it: never overtaken.
    assert tee[0] == tee[1] and tee[1][1] == 1 and [v for _, v in tee[2:]] == [4], tee

    async def settled() -> list[tuple[str, int]] | None:  # outcomes are written a moment after the answer
        rows = await channel.pool.fetch("SELECT status, attempts FROM ecommerce.webhook_deliveries"
                                        " WHERE key = 'TEE-M' ORDER BY id")
        found = [(r["status"], r["attempts"]) for r in rows]
        return found if all(status != "sending" for status, _ in found) else None

    assert await eventually(settled) == [("delivered", 2), ("delivered", 1)]


async def test_a_deleted_subscription_is_not_sent_what_its_queue_held(channel: Channel,
                                                                       receiver: Receiver) -> None:
    release = asyncio.Event()

    async def hold_first(request: Received) -> int:
        if len(receiver.requests) == 1:
            await release.wait()
        return 200

    receiver.respond = hold_first
    sub = await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 1)
    await eventually(lambda: _at_least(receiver.requests, 1))
    await channel.move("more", sku="TEE-M", location_id="wh-1", kind="receipt", qty=1)
    await channel.settled()
    await eventually(lambda: _queued(channel.pool, 2))
    status, body, _ = await channel.ecommerce.request("DELETE", f"/v1/webhooks/{sub}")
    assert status == 200, body
    await asyncio.sleep(0.5)  # lease renewal (every poll interval here) finds the follower cancelled
    release.set()
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 1
    rows = await channel.pool.fetch("SELECT status FROM ecommerce.webhook_deliveries ORDER BY id")
    # The head was on the wire when the subscription went: its answer no longer changes what delete did.
    assert [r["status"] for r in rows] == ["cancelled", "cancelled"]


async def _at_least(items: list[Any], n: int) -> list[Any] | None:
    return items if len(items) >= n else None


async def _queued(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM ecommerce.webhook_deliveries") >= n


async def _fanned_out(pool: asyncpg.Pool) -> bool:
    cursor = (await repo.cursors(pool))[webhooks.CURSOR]
    unread, _ = await repo.consumer_lag(pool, cursor, webhooks.FAMILIES, 1)
    return unread == 0


async def _last_available(receiver: Receiver, sku: str, value: int) -> bool:
    got = receiver.of(sku)
    return bool(got) and got[-1].json["data"]["available"] == value


async def test_the_claim_sleeps_through_followers_blocked_behind_a_message_on_the_wire(pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        sub = (await hooks.create_subscription(conn, "https://a.example/h", [CHANGED], "s" * 16, "t"))["id"]
    assert await hooks.next_due(pool) == (None, False)
    await publish(pool, "HELD")
    assert await fan_out(pool, coalesce_s=0.0) == 1
    head = await pool.fetchval("SELECT id FROM ecommerce.webhook_deliveries WHERE subscription_id = $1", sub)
    await pool.execute("UPDATE ecommerce.webhook_deliveries SET status = 'sending', attempts = 1,"
                       " lease_until = now() + interval '1 minute' WHERE id = $1", head)
    await publish(pool, "HELD")  # queued behind the head on the wire (it cannot fold into a sent message)
    assert await fan_out(pool, coalesce_s=0.0) == 1
    follower = await pool.fetchval("SELECT max(id) FROM ecommerce.webhook_deliveries")
    assert follower != head
    # The follower is due but blocked behind the head on the wire: nothing to claim, something pending.
    assert await hooks.next_due(pool) == (None, True)
    await pool.execute("UPDATE ecommerce.webhook_deliveries SET status = 'delivered' WHERE id = $1", head)
    due, pending = await hooks.next_due(pool)
    assert due == 0.0 and pending  # now it heads its queue: claim at once
    async with transaction(pool) as conn:
        assert [r["id"] for r in await hooks.claim_due(conn, 10, 30.0)] == [follower]
