"""The availability projection: incremental from the outbox, and rebuilt from scratch on demand.

One replica projects at a time (the leader, shared/leadership.py), and every batch moves the cursor in
the statement that writes the projection rows and the `availability.*` events it publishes, only if the
cursor's version is still the one it read, so a crash or a rival never applies a batch twice or skips one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter

from services.ecommerce import domain
from services.ecommerce import repository as repo
from services.ecommerce.background import stop, wait_for_wake
from shared.db import Connection, Pool, transaction
from shared.event_stream import EventHub, next_events
from shared.leadership import Leadership
from shared.logging import get_logger
from shared.outbox import Event, head_position

log = get_logger("omnistock.ecommerce.projection")

CURSOR = "availability"
LEADERSHIP_KEY = 1  # the projector's key among shared/leadership.py jobs
FAMILIES = ["stock", "location", "channel"]
PUBLISHED_FAMILY = "availability"  # only the projection publishes it, one batch at a time (the hub's express lane)
RULES_CHANGED = "channel.rules_changed"
T, U = TypeVar("T"), TypeVar("U")

# Here rather than in sync_metrics.py, which reads this module's names at import.
EXPRESS_BATCHES = Counter(
    "omnistock_availability_batches_published_total",
    "Projector batches that published availability events, by how this process's streams got them:"
    " taken (handed over at commit) or outbox (read once every older transaction had ended)", ["via"])


@dataclass
class Touched:
    """What a batch of events asks the projection to look at again."""

    pairs: set[tuple[str, str]] = field(default_factory=set)
    locations: set[str] = field(default_factory=set)
    rule_skus: set[str] = field(default_factory=set)
    all_rules: bool = False

    @classmethod
    def of(cls, events: list[Event]) -> Touched:
        touched = cls()
        for event in events:
            if event.topic == "stock.changed":
                touched.pairs.add((event.payload["sku"], event.payload["location_id"]))
            elif event.topic == "location.changed":
                touched.locations.add(event.payload["location_id"])
            elif event.topic == RULES_CHANGED:
                scope = event.payload["scope"]
                if scope == domain.DEFAULT_SCOPE:
                    touched.all_rules = True
                else:
                    touched.rule_skus.add(scope)
        return touched


@dataclass
class KnownCursor:
    """The cursor as this process's last batch left it, so the next batch need not read it: anyone else's
    write moves its version, and then that batch is refused and the cursor read afresh."""

    state: repo.CursorState | None = None


async def apply_batch(pool: Pool, limit: int = 1000, *, hub: EventHub | None = None,
                      known: KnownCursor | None = None) -> int | None:
    """Apply the next batch of events (from `hub`'s memory when it holds them); the number applied, or
    None when another process moved the cursor first (nothing was written: read again).

    A batch of stock changes runs in no transaction: it takes the cursor as `known` holds it (as this
    process's last batch left it) or reads it, reads inventory's numbers against the mirror's and each
    SKU's stored availability and rules, then writes everything in one statement
    on the condition that the cursor has not moved (repository.SAVE_BATCH), so it holds a transaction id
    only while that statement runs. A batch with location changes takes the cursor's lock and refreshes
    those locations first, in one transaction. The availability events it published then go to `hub`'s
    readers at once (its express lane), or the hub is poked to read them from the outbox soon."""
    known = known or KnownCursor()
    cursor = known.state or await repo.read_cursor(pool, CURSOR)
    known.state = None  # until this batch's write says where the cursor is
    events = await next_events(pool, cursor.position, limit, FAMILIES, hub)
    if not events:
        known.state = cursor
        return 0
    touched = Touched.of(events)
    if touched.locations:
        async with transaction(pool) as conn:
            if await repo.lock_cursor(conn, CURSOR, wait=False) != cursor.position:
                return None
            batch = await _batch(conn, touched, await _refresh_locations(conn, touched.locations))
            cursor = await repo.read_cursor(conn, CURSOR)
            saved = await repo.save_batch(conn, CURSOR, cursor, events[-1].position, batch)
    else:
        batch = await _batch(pool, touched, None)
        saved = await repo.save_batch(pool, CURSOR, cursor, events[-1].position, batch)
    if saved is None:
        return None
    published = saved.events[-1].position if saved.events else cursor.published
    known.state = repo.CursorState(events[-1].position, cursor.version + 1, published)  # as SAVE_BATCH left it
    if hub is not None and saved.events:
        taken = hub.publish_committed(cursor.published, saved.events)
        EXPRESS_BATCHES.labels("taken" if taken else "outbox").inc()
        if not taken:
            hub.poke(saved.txid)  # SSE and fan-out need not wait for the next poll
    return len(events)


async def _refresh_locations(conn: Connection, locations: set[str]) -> list[str]:
    """Re-copy these locations and every level there (in the cursor's transaction); the SKUs stocked there."""
    await repo.refresh_locations(conn, sorted(locations))
    return await repo.refresh_levels_at(conn, sorted(locations))


async def _batch(db: Pool | Connection, touched: Touched, resummed: list[str] | None) -> repo.Batch:
    """What applying `touched` writes. A SKU's ship sum is the stored one plus how far its ship-enabled
    levels move (rules alone move nothing; a SKU without a stored row has 0), or, after a location change
    (`resummed`: the SKUs stocked there, whose levels were just re-copied), the mirror's sum plus that."""
    skus = {sku for sku, _ in touched.pairs} | touched.rule_skus | set(resummed or [])
    if touched.all_rules:
        skus.update(await repo.projected_skus(db))
    pairs, (default, inputs) = await _read_both(
        repo.pairs_now(db, sorted(touched.pairs)) if touched.pairs else _none([]),
        repo.recompute_inputs(db, sorted(skus), sum_levels=resummed is not None) if skus else _none((None, {})),
        concurrently=isinstance(db, asyncpg.Pool))
    moved: dict[str, int] = {}
    for pair in pairs:
        moved[pair.sku] = moved.get(pair.sku, 0) + pair.ship_moved
    changed: list[tuple[str, domain.Availability]] = []
    events: list[tuple[str, str, dict[str, Any]]] = []
    if skus:
        old = {sku: i.stored for sku, i in inputs.items() if i.stored is not None}
        new = {}
        for sku, i in inputs.items():
            base = i.ship_available if resummed is not None else (i.stored.ship_available if i.stored else 0)
            new[sku] = domain.availability((base or 0) + moved.get(sku, 0), domain.effective_rule(i.own_rule, default))
        changed, events = _changes(old, new)
    return repo.Batch(levels=[(p.sku, p.location_id, p.available) for p in pairs if p.available != p.mirrored],
                      new_locations=sorted({p.location_id for p in pairs if not p.location_mirrored}),
                      changed=changed, events=events)


async def _none(value: T) -> T:
    return value


async def _read_both(first: Awaitable[T], second: Awaitable[U], *, concurrently: bool) -> tuple[T, U]:
    """Both reads; on a pool at once, over two connections (neither depends on the other, and each is a
    wait of the projector's batch under load); on one connection one after the other."""
    if concurrently:
        return await asyncio.gather(first, second)
    return await first, await second


Changes = tuple[list[tuple[str, domain.Availability]], list[tuple[str, str, dict[str, Any]]]]


def _changes(old: dict[str, domain.Availability], new: dict[str, domain.Availability]) -> Changes:
    """The SKUs whose availability `new` changes, and the events each change publishes."""
    # A missing row means "nothing sellable": a SKU never stocked gets no row, as in a rebuild.
    changed = [(sku, a) for sku, a in sorted(new.items()) if old.get(sku, domain.NOTHING) != a]
    events = []
    for sku, current in changed:
        before = old.get(sku, domain.NOTHING)
        payload = domain.change_payload(sku, before, current)
        events.extend((topic, sku, payload) for topic in domain.change_topics(before, current))
    return changed, events


async def catch_up(pool: Pool, limit: int = 1000) -> int:
    """Apply every readable event (reading again after a concurrent consumer's batch); the number applied."""
    total = 0
    while (n := await apply_batch(pool, limit)) != 0:
        total += n or 0
    return total


@dataclass(frozen=True)
class Drift:
    """How far the projection is from a from-scratch computation (all zero when it agrees)."""

    levels: int
    locations: int
    availability: list[tuple[str, domain.Availability | None, domain.Availability | None]]

    @property
    def none(self) -> bool:
        return self.levels == 0 and self.locations == 0 and not self.availability


async def _expected(conn: Connection) -> dict[str, domain.Availability]:
    sums = await repo.ship_sums_from_inventory(conn)
    default, rules = await repo.rules_for(conn, None)
    return {sku: domain.availability(total, domain.effective_rule(rules.get(sku), default))
            for sku, total in sums.items()}


async def _drift(conn: Connection) -> tuple[Drift, dict[str, domain.Availability], dict[str, domain.Availability]]:
    expected, actual = await _expected(conn), await repo.all_availability(conn)
    nothing = domain.NOTHING
    wrong = [(sku, actual.get(sku), expected.get(sku)) for sku in sorted(expected.keys() | actual.keys())
             if actual.get(sku, nothing) != expected.get(sku, nothing)]
    levels = len((await repo.expected_levels(conn)) ^ (await repo.mirrored_levels(conn)))
    locations = len((await repo.expected_locations(conn)) ^ (await repo.mirrored_locations(conn)))
    return Drift(levels, locations, wrong), expected, actual


async def check(pool: Pool) -> Drift:
    """Compare the projection with a from-scratch computation, in one snapshot, changing nothing."""
    async with transaction(pool, isolation="repeatable_read") as conn:
        drift, _, _ = await _drift(conn)
    return drift


async def rebuild(pool: Pool, attempts: int = 5) -> Drift:
    """Recompute everything from inventory and the rules; return the drift it repaired.

    One repeatable-read snapshot, holding the consumer's cursor lock so that no batch interleaves. The
    cursor then moves up to the last event that snapshot already reflects (every event of a transaction
    older than the snapshot's xmin), never back: a fresh projection does not replay the outbox's whole
    history after recomputing it. Events after that position are applied as usual; those the snapshot
    did see only re-read rows, which changes nothing already right.
    """
    for _ in range(attempts - 1):
        try:
            return await _rebuild_once(pool)
        except asyncpg.SerializationError:
            pass  # another process's batch moved the cursor after this snapshot began: look again
    return await _rebuild_once(pool)


async def _rebuild_once(pool: Pool) -> Drift:
    async with transaction(pool, isolation="repeatable_read") as conn:
        position = await repo.lock_cursor(conn, CURSOR, wait=True)
        assert position is not None
        cursor = await repo.read_cursor(conn, CURSOR)
        reflected = await head_position(conn)
        drift, expected, actual = await _drift(conn)
        await repo.replace_mirrors(conn)
        await repo.delete_availability(conn, sorted(actual.keys() - expected.keys()))
        changed, published = _changes(actual, expected)
        # The cursor's version moves even when its position stays: a batch computed against the old
        # mirrors must not be written over the rebuilt ones.
        saved = await repo.save_batch(conn, CURSOR, cursor, max(reflected, position),
                                      repo.Batch([], [], changed, published))
        if saved is None:
            # Its transaction id predates the last batch's publication (drawn before it waited for the
            # cursor's lock): its events would sort before ones already streamed. Roll back, look again.
            raise asyncpg.SerializationError("the projection published after this rebuild began")
    return drift


async def run_projector(pool: Pool, hub: EventHub, poll_s: float, leadership: Leadership) -> None:
    """Background task: apply batches whenever the hub sees events (or every `poll_s`), forever, while
    this process leads (`leadership`): replicas would otherwise all read each batch and all but one
    find their write refused. A replica that does not lead looks again every `poll_s`."""
    wake = asyncio.Event()

    async def listen() -> None:
        async for _ in hub.follow_batches(hub.head, FAMILIES, heartbeat_s=poll_s):
            wake.set()

    listener = asyncio.create_task(listen(), name="ecommerce-projector-wake")
    try:
        first, known = True, KnownCursor()
        while True:
            try:
                if not await leadership.leading():
                    known.state = None
                    await asyncio.sleep(poll_s)
                    continue
                if first and await repo.cursor_of(pool, CURSOR) == (0, 0):
                    # A fresh projection: stock loaded without outbox events (bulk seeding) is only
                    # visible to a rebuild.
                    await rebuild(pool)
                first = False
                while await apply_batch(pool, hub=hub, known=known):
                    pass
            except Exception:  # a background loop must outlive any failure (asyncpg's InternalClientError too)
                log.exception("projection batch failed; retrying")
            await wait_for_wake(wake, poll_s)
            wake.clear()
    finally:
        await stop(listener)
        await leadership.close()
