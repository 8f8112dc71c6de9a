"""Fan the outbox out to many live readers (SSE clients) with one database reader per process.

The hub polls the outbox by position every `poll_interval_s` (tens of milliseconds). It does not rely
on NOTIFY: a NOTIFY in the writers' transactions would serialise their commits (see
shared/migrations/0002_events_without_notify.sql), and an event can become readable later than its
commit anyway (it waits until older transactions finish, see 0001_core.sql). Anyone may still
`NOTIFY omnistock_events` to wake hubs at once; they listen for it.

The hub keeps a bounded window of recent events in memory; each reader walks that window at its own
pace. A reader that falls out of the window (slow, or resuming from long ago) catches up from the
database, so a slow reader never blocks the hub or other readers and memory never grows with the
number of readers or their lag.

With no reader at all the hub reads no events, only where the head is (new live readers start there):
inventory's hub would otherwise copy every stock change of the order traffic into memory for nobody.
The first reader to come finds the window empty from the head on, and reads anything older from the
database like any reader behind the window.

A hub reads only the event families its service's readers follow (`families`): e-commerce's readers never
want `order.*`, and decoding every order event's payload for nobody cost that process a share of its CPU
under the order load. A process that publishes events itself (the projector) `poke`s its hub after the
commit, so its own readers (SSE, the webhook fan-out) see them without waiting for the next poll. The
durable consumers of a process (the projector, the fan-out) take their batches from the hub's memory
(`read_from_memory`) rather than reading the same events from the database a second time.

The express lane: an event becomes readable from the outbox only once every older transaction has
ended (tens of milliseconds under the order load), so a family that one writer at a time publishes, in
commit order (`express_family`: e-commerce's `availability`, written by the projector), is also kept in
a window of its own, which the writing process fills right after its commit (`publish_committed`) when
the batch follows, without a gap, the last event of that family the hub holds. Readers of that family
alone follow that window; the outbox still delivers the same events later (taken once, by position),
and is the only source when the writer is another process or a batch does not follow on.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from shared.db import Connection, Pool
from shared.errors import Problem
from shared.logging import get_logger
from shared.outbox import Event, Position, head_position, read_after, resume_after

log = get_logger("omnistock.events")

CHANNEL = "omnistock_events"
POKE_RECHECK_S = 0.003


class EventHub:
    def __init__(self, pool: Pool, dsn: str, *, window: int = 20_000, poll_interval_s: float = 0.02,
                 families: list[str] | None = None, express_family: str | None = None) -> None:
        self._pool = pool
        self._families = sorted(families) if families is not None else None
        self._dsn = dsn
        self._window = window
        self._poll_interval_s = poll_interval_s
        self._events: list[Event] = []
        self._positions: list[Position] = []
        self._floor: Position = (0, 0)  # everything at or before the floor has left the window
        self._head: Position = (0, 0)
        self._changed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._readers = 0
        self._listener: asyncpg.Connection | None = None
        self._poked = 0  # the newest transaction poke() named that the hub has not read past yet
        self._poked_since: float | None = None
        if express_family is not None and families is not None and express_family not in families:
            raise ValueError(f"the express family {express_family} must be one this hub reads")
        self._express = _Lane(express_family) if express_family is not None else None

    @property
    def head(self) -> Position:
        return self._head

    @property
    def pool(self) -> Pool:
        return self._pool

    def poke(self, txid: int | None = None) -> None:
        """Read now rather than at the next poll: this process just committed events, in transaction
        `txid` if given. Those become readable only once every older transaction has ended, often a few
        milliseconds after the commit: until the hub has read past `txid` it looks again every
        POKE_RECHECK_S (up to a poll interval) instead of waiting for the next poll."""
        if txid is not None:
            self._poked = max(self._poked, txid)
        self._wakeup.set()

    async def start(self) -> None:
        self._head = self._floor = await head_position(self._pool)
        if self._express is not None:
            self._express.reset(self._head)
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_listener()

    async def _run(self) -> None:
        while True:
            try:
                await self._ensure_listener()
                await self._read_new()
            except Exception:  # a background loop must outlive any failure
                log.exception("event hub read failed; retrying")
                await self._close_listener()
            await wait_or_timeout(self._wakeup, self._next_wait_s())
            self._wakeup.clear()

    def _next_wait_s(self) -> float:
        """A poll interval, or POKE_RECHECK_S while a poked transaction is not read yet (for at most a
        poll interval after the poke: its events may not be of this hub's families)."""
        now = time.monotonic()
        if self._poked <= self._head[0]:
            self._poked, self._poked_since = 0, None
        elif self._poked_since is None:
            self._poked_since = now
        elif now - self._poked_since >= self._poll_interval_s:
            self._poked, self._poked_since = 0, None
        return POKE_RECHECK_S if self._poked else self._poll_interval_s

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await asyncpg.connect(self._dsn, server_settings={"application_name": "omnistock-hub"})
        await self._listener.add_listener(CHANNEL, lambda *_: self._wakeup.set())

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def _read_new(self) -> None:
        if not self._readers:
            await self._skip_to_head()
            return
        while True:
            batch = await read_after(self._pool, self._head, 1000, self._families)
            if not batch:
                return
            self._append(batch)
            if len(batch) < 1000:
                return

    async def _skip_to_head(self) -> None:
        head = await head_position(self._pool)
        if head != self._head and not self._readers:  # a reader may have come during the query
            self._head = self._floor = head
            self._events.clear()
            self._positions.clear()
            if self._express is not None:
                self._express.reset(head)

    def _append(self, batch: list[Event]) -> None:
        self._events.extend(batch)
        self._positions.extend(e.position for e in batch)
        self._head = batch[-1].position
        if len(self._events) > 2 * self._window:
            cut = len(self._events) - self._window
            self._floor = self._positions[cut - 1]
            del self._events[:cut]
            del self._positions[:cut]
        if self._express is not None:
            self._express.take_read(batch, self._window)
        self._wake_readers()

    def _wake_readers(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def publish_committed(self, previous: Position, events: list[Event]) -> bool:
        """Hand the express family's events of a transaction this process just committed to this hub's
        readers, before the outbox lets anyone read them; `previous` is the position of that family's
        last event before them (as the writer's cursor row held it). Taken only when the hub holds that
        event last (nothing in between can be missing) and someone follows the hub; otherwise the outbox
        brings them, a little later. Whether they were taken."""
        lane = self._express
        if lane is None or not events or not self._readers or not lane.follows(previous, events):
            return False
        lane.append(events, self._window)
        self._wake_readers()
        return True

    def _is_express(self, families: list[str] | None) -> bool:
        return self._express is not None and families == [self._express.family]

    def read_from_memory(self, position: Position, limit: int, families: list[str]) -> list[Event] | None:
        """The next `limit` events of `families` after `position` that this hub has read, for a durable
        consumer of this process (it would read the same ones, in the same order, from the database);
        None when memory does not cover `position` or those families, or nobody follows the hub (it then
        keeps no window). An empty list means the hub has not read anything newer yet: it wakes its
        readers when it does."""
        if self._is_express(families):
            assert self._express is not None
            return self._express.after(position, limit) if self._readers else None
        if not self._readers or position < self._floor or (
                self._families is not None and not set(families) <= set(self._families)):
            return None
        wanted, found, events = set(families), [], self._events
        for index in range(bisect.bisect_right(self._positions, position), len(events)):  # not islice: it walks from 0
            if events[index].topic.split(".", 1)[0] in wanted:
                found.append(events[index])
                if len(found) == limit:
                    break
        return found

    def _window_after(self, position: Position, limit: int) -> list[Event] | None:
        """Events after `position` from memory, or None when memory no longer covers `position`."""
        if position < self._floor:
            return None
        start = bisect.bisect_right(self._positions, position)
        return self._events[start:start + limit]

    async def follow_batches(self, start: Position, families: list[str] | None = None,
                             heartbeat_s: float = 15.0) -> AsyncIterator[list[Event]]:
        """Every event after `start`, in order, forever, as they arrive: a batch at a time (one write per
        batch for a stream, one wake-up for a consumer), an empty batch as a heartbeat when idle."""
        if self._families is not None and (families is None or not set(families) <= set(self._families)):
            raise ValueError(f"this hub reads only {self._families}, not {families or 'every family'}")
        position, express = start, self._express if self._is_express(families) else None
        self._readers += 1
        self._wakeup.set()  # an idle hub starts reading now, not at its next poll
        try:
            while True:
                changed = self._changed
                if express is not None:
                    batch = express.after(position, 500)
                    if batch is None:
                        batch = await read_after(self._pool, position, 500, families)
                else:
                    batch = self._window_after(position, 500)
                    if batch is None:
                        batch = await read_after(self._pool, position, 500, self._families)
                if not batch:
                    if not await wait_or_timeout(changed, heartbeat_s):
                        yield []
                    continue
                position = batch[-1].position
                if families is not None:
                    batch = [event for event in batch if event.topic.split(".", 1)[0] in families]
                if batch:
                    yield batch
        finally:
            self._readers -= 1

    @property
    def readers(self) -> int:
        """Readers following the hub now (SSE clients, the projector, the webhook fan-out)."""
        return self._readers

    @property
    def buffered(self) -> int:
        """Events held in the in-memory window."""
        return len(self._events)


class _Lane:
    """The express family's window: every event of that family after `floor`, in position order (which
    for this family is commit order), the last one being `last` (None until the hub has one)."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.events: list[Event] = []
        self.positions: list[Position] = []
        self.floor: Position = (0, 0)
        self.last: Position | None = None

    def reset(self, floor: Position) -> None:
        self.events.clear()
        self.positions.clear()
        self.floor, self.last = floor, None

    def follows(self, previous: Position, events: list[Event]) -> bool:
        return self.last is not None and previous == self.last and all(
            e.topic.split(".", 1)[0] == self.family for e in events)

    def take_read(self, batch: list[Event], window: int) -> None:
        """The family's events of a batch read from the outbox that the lane does not hold yet."""
        fresh = [e for e in batch if e.topic.split(".", 1)[0] == self.family
                 and (self.last is None or e.position > self.last)]
        if fresh:
            self.append(fresh, window)

    def append(self, events: list[Event], window: int) -> None:
        self.events.extend(events)
        self.positions.extend(e.position for e in events)
        self.last = events[-1].position
        if len(self.events) > 2 * window:
            cut = len(self.events) - window
            self.floor = self.positions[cut - 1]
            del self.events[:cut]
            del self.positions[:cut]

    def after(self, position: Position, limit: int) -> list[Event] | None:
        """The lane's events after `position`, or None when it no longer covers `position`."""
        if position < self.floor:
            return None
        start = bisect.bisect_right(self.positions, position)
        return self.events[start:start + limit]


async def next_events(conn: Connection, position: Position, limit: int, families: list[str],
                      hub: EventHub | None) -> list[Event]:
    """A durable consumer's next batch after its cursor: from its process's hub when that covers it,
    else from the database (inside the consumer's transaction, under its cursor lock either way)."""
    if hub is not None and (events := hub.read_from_memory(position, limit, families)) is not None:
        return events
    return await read_after(conn, position, limit, families)


async def wait_or_timeout(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether `event` was set within `timeout_s`. Unlike asyncio.wait_for on 3.11, a cancellation
    arriving at the same moment is never swallowed, so loops built on this always stop when told."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()
    return bool(done)


def sse_frame(event: Event, render: Callable[[Event], bytes]) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.topic.encode(), render(event))


class StreamResyncRequired(Problem):
    """410: a stream asked to resume from before the outbox's retention window (README, Housekeeping)."""

    status, code, title = 410, "stream-resync-required", "Events after this point are no longer kept"


# What a client re-reads for a fresh snapshot, per event family a stream carries.
SNAPSHOTS: dict[str, str] = {
    "stock": "GET /v1/stock/{sku} on inventory",
    "availability": "GET /v1/availability?sku=... on e-commerce",
}


async def resume_point(pool: Pool, event_id: int, families: list[str]) -> Position | None:
    """Where a stream resumed after `event_id` starts; None if no such event was ever published.

    An id from before the retention window is refused rather than served with a silent gap: the client
    fetches a fresh snapshot and reconnects without Last-Event-ID (a live stream starts at the head)."""
    resume = await resume_after(pool, event_id)
    if resume.pruned:
        snapshot = "; ".join(SNAPSHOTS[f] for f in families if f in SNAPSHOTS) or "the current state"
        raise StreamResyncRequired(
            f"events after id {event_id} are past the retention window and no longer all kept:"
            f" fetch a fresh snapshot ({snapshot}), then reconnect without Last-Event-ID",
            snapshot=snapshot, reconnect="without Last-Event-ID (the stream starts at the head)")
    return resume.position
