"""The availability projection: incremental from the outbox, and rebuilt from scratch on demand.

One consumer works at a time (it holds the cursor row's lock for its whole batch, replicas skip it),
and it moves the cursor in the same transaction as the projection rows and the `availability.*`
events it publishes, so a crash never applies a batch twice or skips one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.ecommerce import domain
from services.ecommerce import repository as repo
from services.ecommerce.background import stop, wait_for_wake
from shared.db import Connection, Pool, transaction
from shared.event_stream import EventHub, next_events
from shared.logging import get_logger
from shared.outbox import Event, head_position

log = get_logger("omnistock.ecommerce.projection")

CURSOR = "availability"
FAMILIES = ["stock", "location", "channel"]
RULES_CHANGED = "channel.rules_changed"


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


async def apply_batch(pool: Pool, limit: int = 1000, *, wait: bool = False, hub: EventHub | None = None) -> int | None:
    """Apply the next batch of events (from `hub`'s memory when it holds them); the number applied, or
    None if another process holds the cursor. A batch of stock changes is four statements: lock the
    cursor, refresh the mirrors, read what recomputing needs, write the result with the cursor. After
    the commit `hub` is poked with the transaction that published availability events, if any."""
    async with transaction(pool) as conn:
        position = await repo.lock_cursor(conn, CURSOR, wait=wait)
        if position is None:
            return None
        events = await next_events(conn, position, limit, FAMILIES, hub)
        if not events:
            return 0
        changed, published = await _apply(conn, Touched.of(events))
        txid = await repo.save_projection(conn, changed, published, (CURSOR, events[-1].position))
    if hub is not None and published:
        hub.poke(txid)  # SSE and fan-out need not wait for the next poll
    return len(events)


Changes = tuple[list[tuple[str, domain.Availability]], list[tuple[str, str, dict[str, Any]]]]


async def _apply(conn: Connection, touched: Touched) -> Changes:
    """Refresh the mirrors for `touched`; the availability that changed and the events to publish."""
    if touched.locations:
        await repo.refresh_locations(conn, sorted(touched.locations))
    moved = await repo.refresh_pairs(conn, sorted(touched.pairs)) if touched.pairs else {}
    skus = {sku for sku, _ in touched.pairs} | touched.rule_skus
    if touched.locations:
        skus.update(await repo.refresh_levels_at(conn, sorted(touched.locations)))
    if touched.all_rules:
        skus.update(await repo.projected_skus(conn))
    if not skus:
        return [], []
    # A location's change may move every level there and flip its ship flag: sum those SKUs afresh.
    # Otherwise a SKU's ship sum is the stored one plus how far its ship-enabled levels moved (rules
    # alone move nothing); the stored row is exactly that sum (a SKU without one has 0).
    summed = bool(touched.locations)
    default, inputs = await repo.recompute_inputs(conn, sorted(skus), sum_levels=summed)
    old = {sku: i.stored for sku, i in inputs.items() if i.stored is not None}
    new = {}
    for sku, i in inputs.items():
        ship = i.ship_available if summed else (i.stored.ship_available if i.stored else 0) + moved.get(sku, 0)
        new[sku] = domain.availability(ship, domain.effective_rule(i.own_rule, default))
    return _changes(old, new)


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
    """Apply every readable event (waiting for a concurrent consumer's batch); the number applied."""
    total = 0
    while n := await apply_batch(pool, limit, wait=True):
        total += n
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
        reflected = await head_position(conn)
        drift, expected, actual = await _drift(conn)
        await repo.replace_mirrors(conn)
        await repo.delete_availability(conn, sorted(actual.keys() - expected.keys()))
        changed, published = _changes(actual, expected)
        await repo.save_projection(conn, changed, published, (CURSOR, reflected) if reflected > position else None)
    return drift


async def run_projector(pool: Pool, hub: EventHub, poll_s: float) -> None:
    """Background task: apply batches whenever the hub sees events (or every `poll_s`), forever."""
    wake = asyncio.Event()

    async def listen() -> None:
        async for _ in hub.follow_batches(hub.head, FAMILIES, heartbeat_s=poll_s):
            wake.set()

    listener = asyncio.create_task(listen(), name="ecommerce-projector-wake")
    try:
        first = True
        while True:
            try:
                if first and await repo.cursor_of(pool, CURSOR) == (0, 0):
                    # A fresh projection: stock loaded without outbox events (bulk seeding) is only
                    # visible to a rebuild.
                    await rebuild(pool)
                first = False
                while await apply_batch(pool, hub=hub):
                    pass
            except Exception:  # a background loop must outlive any failure (asyncpg's InternalClientError too)
                log.exception("projection batch failed; retrying")
            await wait_for_wake(wake, poll_s)
            wake.clear()
    finally:
        await stop(listener)
