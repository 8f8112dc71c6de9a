"""Sending webhooks: each (subscription, SKU) queue in memory, many queues in flight, outcomes in batches.

The hot path never asks the database what to send: fan-out (webhooks.fan_out, with this dispatcher as
its holder) leases the messages this process may send at once in the statement that enqueues them and
hands them over after its commit. Each queue sends one message at a time, in order; up to
`webhook_concurrency` queues are on the wire together over the sender's keep-alive connections; a
newer snapshot replaces a queued one not yet sent. Outcomes are written many per statement by one
writer, in the order they happened, so a crash can lose only a suffix of them: those messages are sent
again when their lease runs out (at-least-once; receivers dedupe on the event id), never out of order.

The database claim (CLAIM_DUE) is the slow path: a retry whose backoff ran out (the messages behind a
failed one wait in the database with it), a lease of a dispatcher that died, a redelivery. Every
replica runs one and sends what it claims; one replica at a time fans out (shared/leadership.py), and
the cursor's version check in fan-out's statement and SKIP LOCKED claims keep their messages disjoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from datetime import UTC, datetime

from services.ecommerce import domain
from services.ecommerce import webhook_repository as hooks
from services.ecommerce.background import stop, wait_for_wake
from services.ecommerce.delivery import Outcome, Sender
from services.ecommerce.sync_metrics import WEBHOOK_ATTEMPTS, WEBHOOK_STALENESS
from services.ecommerce.webhooks import FanOut, Held, fan_out
from shared.db import Pool, transaction
from shared.event_stream import EventHub
from shared.leadership import Leadership
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("omnistock.ecommerce.webhooks")

QueueKey = tuple[int, str]
BLOCKED_RECHECK_S = 0.05
FAMILIES = ["availability"]
_jitter = random.SystemRandom()
# The labelled counters once, not labels() on every attempt.
_ATTEMPTS = {result: WEBHOOK_ATTEMPTS.labels(result) for result in ("delivered", "retry", "dead")}


def request_for(held: list[Held], now: float) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one POST: a single change, or for a batch subscription an
    availability.batch of these changes (one per SKU, each SKU's in its queue's order)."""
    first = held[0]
    if first.batch:
        body, topic = domain.batch_body([h.body for h in held]), domain.BATCH_TOPIC
    else:
        body, topic = first.body, first.topic
    # Signed per attempt: a retry carries its own time, so receivers can keep a short tolerance.
    timestamp = int(now)
    return body, {
        "Content-Type": "application/json",
        "X-Omnistock-Signature": domain.signature(first.secret, timestamp, body),
        # A batch lists every change's id and delivery in body order (receivers dedupe on event ids).
        "X-Omnistock-Event-Id": ",".join(str(h.event_id) for h in held),
        "X-Omnistock-Event": topic,
        "X-Omnistock-Delivery-Id": ",".join(str(h.id) for h in held),
        "X-Omnistock-Attempt": str(max(h.attempts for h in held)),
        "X-Omnistock-Timestamp": str(timestamp),  # the signature's t, for receivers that log it
    }


class Dispatcher:
    """Background tasks of one process: fan-out, sending from memory, the outcome writer, the claim of
    what waits in the database, and lease renewal."""

    def __init__(self, pool: Pool, hub: EventHub, settings: Settings, fan_out_lead: Leadership) -> None:
        self.pool, self.hub, self.settings = pool, hub, settings
        self.fan_out_lead = fan_out_lead  # one replica fans out; every replica sends and claims
        self.sender = Sender(settings)
        self.lease_s = settings.webhook_timeout_s + 30.0
        self.queues: dict[QueueKey, deque[Held]] = {}
        self.busy: set[QueueKey] = set()  # the queue's head is on the wire
        self.requests = 0  # POSTs on the wire (a batch carries many queues' heads)
        self.reserved: set[QueueKey] = set()  # a fan-out may be replacing the queue's tail
        self.released: set[QueueKey] = set()  # gave its messages back to the database since that fan-out began
        self.ready: dict[QueueKey, None] = {}  # heads due, waiting for a free slot, oldest first
        self.batch_ready: dict[int, dict[QueueKey, None]] = {}  # the same per batch subscription
        self.batch_turn = False  # the next free slot goes to a batch (slots alternate between the kinds)
        self.pump_due = False
        self.timers: dict[QueueKey, asyncio.TimerHandle] = {}
        self.from_claim: set[int] = set()  # held ids the claim gave (their queue may have more in the database)
        self.waiting_behind: set[QueueKey] = set()  # held queues with a message queued in the database behind
        self.claim_after_write = False  # such a queue's head settled: claim once its outcome is written
        self.outcomes: list[hooks.AttemptOutcome] = []
        self.releases: list[int] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.events_arrived = asyncio.Event()  # the hub saw availability events: fan out
        self.claim_wake = asyncio.Event()  # something may wait in the database: claim
        self.write_wake = asyncio.Event()  # outcomes to write

    # --- running --------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.sender.start()
        loops = [asyncio.create_task(self._listen(), name="ecommerce-webhooks-wake"),
                 asyncio.create_task(self._fan_out_loop(), name="ecommerce-webhooks-fan-out"),
                 asyncio.create_task(self._claim_loop(), name="ecommerce-webhooks-claim"),
                 asyncio.create_task(self._write_loop(), name="ecommerce-webhooks-outcomes"),
                 asyncio.create_task(self._renew_loop(), name="ecommerce-webhooks-leases")]
        try:
            await asyncio.gather(*loops)
        finally:
            # An interrupted send stays 'sending' until its lease runs out, then goes again (at-least-once);
            # what finished is written now, so it is not sent twice.
            for task in (*loops, *self.in_flight):
                await stop(task)
            for timer in self.timers.values():
                timer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._write(), timeout=5.0)
            await self.sender.close()
            await self.fan_out_lead.close()

    async def _listen(self) -> None:
        async for _ in self.hub.follow_batches(self.hub.head, FAMILIES,
                                               heartbeat_s=self.settings.webhook_poll_interval_s):
            self.events_arrived.set()

    async def _fan_out_loop(self) -> None:
        while True:
            timeout = self.settings.webhook_poll_interval_s
            try:
                # Replicas that all fanned out would all read each batch and all but one be refused.
                if await self.fan_out_lead.leading() and await fan_out(
                        self.pool, self.settings.webhook_coalesce_s, holder=self, hub=self.hub) != 0:
                    timeout = 0.0  # more may be waiting, or another fan-out got there first: look at once
            except Exception:  # a background loop must outlive any failure
                log.exception("webhook fan-out failed; retrying")
            await wait_for_wake(self.events_arrived, timeout)
            self.events_arrived.clear()

    async def _claim_loop(self) -> None:
        while True:
            timeout = self.settings.webhook_poll_interval_s
            try:
                await self._claim()
                due, pending = await hooks.next_due(self.pool)
                if due is not None:
                    timeout = min(timeout, max(due, 0.005))
                if pending:
                    # Blocked behind a message another replica sends (nothing here settles it to wake us)
                    # or behind one that is still being written: look again soon, not at once.
                    timeout = min(timeout, BLOCKED_RECHECK_S)
            except Exception:  # a background loop must outlive any failure
                log.exception("webhook claim failed; retrying")
            await wait_for_wake(self.claim_wake, timeout)
            self.claim_wake.clear()

    async def _claim(self) -> None:
        room = self.settings.webhook_concurrency - self.requests - len(self.ready)
        if room <= 0:
            return
        async with transaction(self.pool) as conn:
            rows = await hooks.claim_due(conn, room, self.lease_s)
        for row in rows:
            held = Held.of_claim(row)
            self.from_claim.add(held.id)
            self.queues.setdefault((held.subscription_id, held.key), deque()).append(held)
            self._kick((held.subscription_id, held.key))

    async def _write_loop(self) -> None:
        while True:
            await self.write_wake.wait()
            self.write_wake.clear()
            try:
                claim, self.claim_after_write = self.claim_after_write, False
                if await self._write() or claim:
                    self.claim_wake.set()  # a retry, released or queued messages wait in the database now
            except Exception:  # a background loop must outlive any failure; the batch is tried again
                log.exception("writing webhook outcomes failed; retrying")
                await asyncio.sleep(0.5)
                self.write_wake.set()

    async def _write(self) -> bool:
        """Write the outcomes and releases so far in one transaction; whether any went back to the queue."""
        outcomes, releases = self.outcomes, self.releases
        if not outcomes and not releases:
            return False
        self.outcomes, self.releases = [], []
        try:
            if releases:
                async with transaction(self.pool) as conn:
                    await hooks.record_outcomes(conn, outcomes)
                    await hooks.release(conn, releases)
            else:  # one statement is atomic on its own: no BEGIN and COMMIT round trips
                await hooks.record_outcomes(self.pool, outcomes)
        except BaseException:
            self.outcomes[:0], self.releases[:0] = outcomes, releases  # first again, in their order
            raise
        return bool(releases) or any(not o.delivered and o.retry_in_s is not None for o in outcomes)

    async def _renew_loop(self) -> None:
        """Every poll interval, drop what deleted subscriptions held (delete cancelled it in the database);
        every third of a lease, extend the leases about to run out."""
        renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.webhook_poll_interval_s)
            try:
                if self.queues:
                    self._drop_all_but(await hooks.live_subscription_ids(self.pool))
                if time.monotonic() - renewed_at >= self.lease_s / 3:
                    held = [h.id for queue in self.queues.values() for h in queue]
                    await hooks.renew_leases(self.pool, held, self.lease_s, self.lease_s / 2)
                    renewed_at = time.monotonic()
            except Exception:  # a background loop must outlive any failure
                log.exception("renewing webhook leases failed; retrying")

    def _drop_all_but(self, live: set[int]) -> None:
        for key in [k for k in self.queues if k[0] not in live]:
            queue = self.queues[key]
            self._replace(key, deque([queue[0]]) if key in self.busy else deque())  # the head is on the wire

    # --- fan-out's holder -------------------------------------------------------------------------------

    def held_tail(self, subscription_id: int, key: str) -> int | None:
        queue = self.queues.get((subscription_id, key))
        return queue[-1].id if queue else None

    def reserve_tail(self, subscription_id: int, key: str, topic: str) -> int | None:
        queue_key = (subscription_id, key)
        queue = self.queues.get(queue_key)
        if not queue or topic != domain.COALESCABLE_TOPIC or queue[-1].topic != topic:
            return None
        if queue_key in self.busy and len(queue) == 1:
            return None  # the tail is on the wire
        self.reserved.add(queue_key)
        return queue[-1].id

    def fanned_out(self, fan: FanOut | None) -> None:
        touched = set(self.reserved)
        self.reserved.clear()
        if fan is not None:
            for delivery_id, message in fan.folded.items():
                for held in self.queues.get((message.subscription_id, message.key), ()):
                    if held.id == delivery_id:
                        held.event_id, held.body = message.event_id, message.body
            for held in fan.leased:
                key = (held.subscription_id, held.key)
                if key in self.released and key not in self.queues:
                    # Its queue went back to the database while this batch was being written: behind
                    # the retry there is where it belongs.
                    self.releases.append(held.id)
                    self.write_wake.set()
                    continue
                self.queues.setdefault(key, deque()).append(held)
                touched.add(key)
            self._drop_all_but(fan.live)  # a deleted subscription's deliveries are cancelled
            if fan.queued:
                # Queued behind another's message (a retry, another replica's lease, or one this process
                # holds): only the claim sends them, once what is ahead of them is settled. Otherwise
                # nothing of this batch waits in the database, and the claim stays asleep.
                # A queue this process holds is told apart: its head's settling is what frees them.
                self.waiting_behind.update(key for key in fan.queued if key in self.queues)
                self.claim_wake.set()
        self.released.clear()
        for key in touched:
            self._kick(key)

    # --- sending ----------------------------------------------------------------------------------------

    def _kick(self, key: QueueKey) -> None:
        """Make the queue's head ready to send if it is due; else wait for its time. Ready heads leave at
        the end of this turn of the loop, so what one fan-out hands over can travel in few batches."""
        if key in self.busy or key in self.reserved:
            return
        queue = self.queues.get(key)
        if not queue:
            self.queues.pop(key, None)
            return
        delay = queue[0].due - time.time()
        if delay > 0:
            if key not in self.timers:
                self.timers[key] = asyncio.get_running_loop().call_later(delay, self._timer_fired, key)
            return
        if queue[0].batch:
            self.batch_ready.setdefault(key[0], {})[key] = None
        else:
            self.ready[key] = None
        self._kick_pump()

    def _pump(self) -> None:
        """Put ready heads on the wire while slots are free: one POST per single-change queue, up to
        `webhook_batch_max` queues' heads per POST of a batch subscription."""
        self.pump_due = False
        now = time.time()
        while self.requests < self.settings.webhook_concurrency and (self.ready or self.batch_ready):
            take_batch = bool(self.batch_ready) and (self.batch_turn or not self.ready)
            self.batch_turn = not take_batch
            if take_batch:
                subscription_id = next(iter(self.batch_ready))
                waiting = self.batch_ready.pop(subscription_id)
                keys = list(itertools.islice(waiting, self.settings.webhook_batch_max))
                if len(waiting) > len(keys):  # the rest waits at the back: subscriptions take turns
                    self.batch_ready[subscription_id] = dict.fromkeys(itertools.islice(waiting, len(keys), None))
            else:
                keys = [next(iter(self.ready))]
                del self.ready[keys[0]]
            # A queue changed since it became ready (sent, dropped, reserved) was kicked again if it still
            # has something to send.
            heads = [(key, queue[0]) for key in keys if (queue := self.queues.get(key))
                     and key not in self.busy and key not in self.reserved and queue[0].due <= now]
            if heads:
                self._start(heads)

    def _start(self, heads: list[tuple[QueueKey, Held]]) -> None:
        self.requests += 1
        self.busy.update(key for key, _ in heads)
        task = asyncio.create_task(self._send(heads))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    def _timer_fired(self, key: QueueKey) -> None:
        self.timers.pop(key, None)
        self._kick(key)

    def _replace(self, key: QueueKey, queue: deque[Held]) -> None:
        if queue:
            self.queues[key] = queue
            return
        self.queues.pop(key, None)
        self.ready.pop(key, None)
        self.waiting_behind.discard(key)  # nothing held left to settle (e.g. a deleted subscription's)
        waiting = self.batch_ready.get(key[0])
        if waiting is not None:
            waiting.pop(key, None)
            if not waiting:
                del self.batch_ready[key[0]]

    async def _send(self, heads: list[tuple[QueueKey, Held]]) -> None:
        started = datetime.now(UTC)
        body, headers = request_for([held for _, held in heads], time.time())
        try:
            outcome = await self.sender.send(heads[0][1].url, body, headers)
        except Exception as exc:  # noqa: BLE001 - whatever broke, it is a failed attempt, never a lost one
            outcome = Outcome(None, f"{type(exc).__name__}: {exc}"[:300], 0.0)
        finally:
            self.requests -= 1
        for key, held in heads:  # a batch succeeds or fails as a whole: every change in it gets the outcome
            self._settle(key, held, started, outcome)
        self._kick_pump()

    def _kick_pump(self) -> None:
        if not self.pump_due:
            self.pump_due = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _settle(self, key: QueueKey, held: Held, started: datetime, outcome: Outcome) -> None:
        self.busy.discard(key)
        settings = self.settings
        retry_in = None if outcome.ok or held.attempts >= settings.webhook_max_attempts else domain.backoff_s(
            held.attempts, settings.webhook_backoff_base_s, settings.webhook_backoff_max_s, _jitter.random())
        self.outcomes.append(hooks.AttemptOutcome(held.id, held.attempts, started, outcome.duration_ms,
                                                  outcome.status_code, outcome.error, outcome.ok, retry_in))
        self.write_wake.set()
        result = "delivered" if outcome.ok else ("retry" if retry_in is not None else "dead")
        _ATTEMPTS[result].inc()
        if outcome.ok:
            WEBHOOK_STALENESS.observe(max(0.0, time.time() - held.event_at))
        else:
            log.info("webhook attempt failed", delivery_id=held.id, attempt=held.attempts, error=outcome.error)
        if held.id in self.from_claim:
            self.from_claim.discard(held.id)
            self.claim_wake.set()  # the next message of its queue may be waiting in the database
        if key in self.waiting_behind:
            self.waiting_behind.discard(key)
            self.claim_after_write = True  # what waits behind it becomes claimable when its outcome is written
        queue = self.queues.get(key, deque())
        if queue and queue[0] is held:
            queue.popleft()
        if retry_in is not None:
            # The rest waits behind the retry, in the database, where the claim keeps their order; so does
            # whatever a fan-out under way leases behind it (fanned_out gives those back too).
            self.releases.extend(h.id for h in queue)
            self.released.add(key)
            queue = deque()
        self._replace(key, queue)
        self._kick(key)
