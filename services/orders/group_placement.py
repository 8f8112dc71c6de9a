"""Group placement: orders that arrive together are placed together, in one transaction.

Placed alone, every order pays for a transaction of its own (five round trips and a commit), and on
a hot SKU every order holds the level's row lock from its reservation to its commit, so buyers of one
SKU go one commit at a time. Here POST /v1/orders hands its order to the `PlacementGroup`; whenever
fewer than `max_inflight` groups are running, what is queued (up to `max_batch`) leaves as one group.
No timer: at low load an order leaves at once, alone; under load orders gather while the group ahead
is in flight, so waiting adds no more than that group's time.

A group is two round trips on one connection: one read of the catalogue and stock of all its orders
(sourcing runs here, on that snapshot), then `orders.place_batch`, one statement and so one
transaction: it claims every key, reserves through `inventory.reserve_groups` (each level locked and
written once, orders checked in arrival order, each all-or-nothing), writes the placed orders and
their events, and commits once.

Each order keeps the promises of the one-order path (`placement.place_order` inside `run_once`):
- an order that cannot be filled is answered 409 and changes nothing; the others are placed;
- Idempotency-Key: a key used before replays its stored answer (same body) or is a 409 (another
  body); a key claimed by a transaction in flight makes the group wait for it, as a lone order would;
  the same key twice in one group: the first goes, the copies are answered as its replays (or wait
  for the next group if it stored nothing);
- an error known before the group (403, 422, 409 insufficient-stock) is answered only after the
  key was checked, so a retried request still gets its stored answer, as when the claim came first;
- a store key's orders stay within its unpaid-units cap across groups and replicas: the statement
  takes the key's lock (orders.lock_unpaid) before counting, and refuses, in arrival order, the
  orders past the cap (409 unpaid-units-limit, nothing reserved);
- an order whose stock went between the read and the lock is sourced again in the next group, at
  the front of the queue; after PLACEMENT_ATTEMPTS such races it is placed alone;
- if a group fails unexpectedly (a bug, a duplicate external_id, the database going away), its one
  statement changed nothing and each of its orders is placed alone, so one bad order cannot fail the
  others.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.orders import repository as repo
from services.orders.placement import (
    PLACEMENT_ATTEMPTS,
    Draft,
    Placement,
    allocate,
    draft_order,
    named_locations,
    over_unpaid_cap,
    place_order,
    placed_event,
    placed_out,
    price,
    reserved_until,
)
from services.orders.schemas import OrderIn
from shared.auth import Principal
from shared.db import Pool, transaction
from shared.errors import IdempotencyConflict, Problem, ServiceUnavailable
from shared.idempotency import StoredResponse, run_once
from shared.logging import get_logger

log = get_logger("omnistock.orders.placement")

ALONE = "alone"  # place this order on the one-order path
REQUEUE = "requeue"  # try again in the next group, at the front of the queue
Result = StoredResponse | Problem | str


@dataclass(eq=False)
class Pending:
    """A request waiting for its group."""

    body: OrderIn
    principal: Principal
    scope: str
    key: str
    fingerprint: bytes
    future: asyncio.Future[Result]
    attempts: int = 0

    @property
    def claim(self) -> tuple[str, str]:
        return (self.scope, self.key)


@dataclass(eq=False)
class Entry:
    """A group's leader for one key: what goes to the database, and the answer if it is placed."""

    pending: Pending
    order: repo.BatchOrder
    answer: dict[str, Any] | Problem


class PlacementGroup:
    """Gathers concurrent placements and places them in groups; see the module docstring."""

    def __init__(self, pool: Pool, placement: Placement, *, max_batch: int = 64, max_inflight: int = 2) -> None:
        self._pool = pool
        self._placement = placement
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: deque[Pending] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections kept between groups: given back to the pool, each would be reset (a round trip
        # of four statements) after every group. Groups leave no session state behind.
        self._idle: list[asyncpg.Connection] = []
        self.stats: Counter[str] = Counter()  # groups, orders, alone, failed_groups, largest

    async def place(self, body: OrderIn, principal: Principal, scope: str, key: str,
                    fingerprint: bytes) -> StoredResponse:
        """Place one order (inside some group) at most once per (scope, key); raises its Problem."""
        pending = Pending(body, principal, scope, key, fingerprint, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._schedule()
        result = await pending.future
        if isinstance(result, StoredResponse):
            return result
        if isinstance(result, Problem):
            raise result
        self.stats["alone"] += 1
        return await self._alone(pending)

    async def close(self) -> None:
        """Let the groups in flight (and what they put back in the queue) finish."""
        while self._tasks or self._queue:
            if not self._tasks:
                self._start_groups()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        while self._idle:
            await self._pool.release(self._idle.pop())

    async def _alone(self, pending: Pending) -> StoredResponse:
        async with transaction(self._pool) as conn:

            async def work() -> tuple[int, Any]:
                out = await place_order(conn, pending.body, pending.principal, self._placement)
                return 201, out.model_dump(mode="json")

            return await run_once(conn, pending.scope, pending.key, pending.fingerprint, work)

    def _schedule(self) -> None:
        # Started on the next turn of the loop, so requests that arrive in the same turn go together.
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_groups)

    def _start_groups(self) -> None:
        self._scheduled = False
        while self._queue and self._inflight < self._max_inflight:
            group = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            self._inflight += 1
            task = asyncio.create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[Pending]) -> None:
        try:
            results = await self._place_group(group)
        except asyncio.CancelledError:
            results = {p: ServiceUnavailable("the service is stopping; retry") for p in group}
            raise
        except Exception:  # the group's one statement changed nothing: place each order alone
            log.exception("group placement failed; placing its orders one by one", orders=len(group))
            self.stats["failed_groups"] += 1
            results = {p: ALONE for p in group}
        finally:
            self._inflight -= 1
            again = []
            for p in group:
                result = results.get(p, ALONE)
                if p.future.done():
                    continue
                if result == REQUEUE:
                    again.append(p)
                else:
                    p.future.set_result(result)
            self._queue.extendleft(reversed(again))
            self._schedule()

    async def _place_group(self, group: list[Pending]) -> dict[Pending, Result]:
        leaders: dict[tuple[str, str], Pending] = {}
        for p in group:
            if not p.future.done():  # a request cancelled while queued is dropped
                leaders.setdefault(p.claim, p)
        if not leaders:
            return {}
        self.stats["groups"] += 1
        self.stats["orders"] += len(leaders)
        self.stats["largest"] = max(self.stats["largest"], len(leaders))
        now = datetime.now(UTC)
        conn = self._idle.pop() if self._idle else await self._pool.acquire()
        try:
            entries = await self._entries(conn, list(leaders.values()), now)
            rows = await repo.place_batch(conn, [e.order for e in entries], now)
        except BaseException:
            await self._pool.release(conn)  # the pool resets it, or drops it if it broke
            raise
        self._idle.append(conn)
        return _decide(group, entries, {r["idx"]: r for r in rows})

    async def _entries(self, conn: asyncpg.Connection, leaders: list[Pending], now: datetime) -> list[Entry]:
        """Check, then source every leader on one snapshot of all their SKUs."""
        placement = self._placement
        named = [x for p in leaders for x in named_locations(p.body, p.principal)]
        sites = await placement.directory.sites(conn, named)
        drafts: list[Draft | Problem] = []
        for p in leaders:
            try:
                drafts.append(draft_order(p.body, p.principal, sites))
            except Problem as exc:
                drafts.append(exc)
        ok = [d for d in drafts if isinstance(d, Draft)]
        # Most drafts share one eligible mapping (the shipping sites): union each distinct one once.
        eligible: set[str] = set()
        for mapping in {id(d.eligible): d.eligible for d in ok}.values():
            eligible.update(mapping)
        snapshot = await repo.read_stock(conn, list(dict.fromkeys(s for d in ok for s in d.skus)),
                                         eligible) if ok else None
        entries = []
        for p, draft in zip(leaders, drafts, strict=True):
            bare = repo.BatchOrder(p.scope, p.key, p.fingerprint)
            if isinstance(draft, Problem):
                entries.append(Entry(p, bare, draft))
                continue
            assert snapshot is not None
            try:
                priced = price(draft, placement, snapshot)
                allocations = allocate(draft, placement.policy, snapshot)
            except Problem as exc:
                entries.append(Entry(p, bare, exc))
                continue
            until = reserved_until(draft, placement, now)
            out = placed_out(draft, priced, allocations, until, now).model_dump(mode="json")
            body, ful = draft.body, draft.body.fulfillment
            entries.append(Entry(p, repo.BatchOrder(
                p.scope, p.key, p.fingerprint, response=out, order_id=draft.order_id, channel=body.channel,
                external_id=body.external_id, selling_location_id=draft.selling, currency=body.currency,
                fulfillment_type=ful.type, pickup_location_id=ful.location_id if ful.type == "pickup" else None,
                ship_to=draft.ship_to, totals=priced.totals, reserved_until=until, actor=draft.actor,
                event=placed_event(draft, priced, allocations), unpaid_cap=placement.unpaid_cap(draft),
                lines=priced.rows(),
                allocations=[(a.line_no, a.sku, a.location_id, a.qty) for a in allocations],
            ), out))
        return entries


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"Idempotency-Key '{key}' was already used with a different request")


def _decide(group: list[Pending], entries: list[Entry], rows: dict[int, asyncpg.Record]) -> dict[Pending, Result]:
    """What each request of the group gets, from what the database did with each leader."""
    results: dict[Pending, Result] = {}
    leaders = {e.pending.claim: e.pending for e in entries}
    by_claim: dict[tuple[str, str], Result] = {}  # what a copy with the leader's body gets
    for n, entry in enumerate(entries, 1):
        p, row = entry.pending, rows.get(n)
        outcome = row["outcome"] if row is not None else None
        if outcome == "placed":
            assert isinstance(entry.answer, dict)
            results[p] = StoredResponse(201, entry.answer, replayed=False)
            by_claim[p.claim] = StoredResponse(201, entry.answer, replayed=True)
        elif outcome == "replayed":
            results[p] = by_claim[p.claim] = StoredResponse(row["stored_status"], row["stored_response"], replayed=True)
        elif outcome == "conflict":
            results[p] = _conflict(p.key)
        elif outcome == "free":
            assert isinstance(entry.answer, Problem)
            results[p] = entry.answer
        elif outcome == "over_cap":
            held = row["short_lines"]
            results[p] = over_unpaid_cap(held["requested"], held["limit"], held["held"])
        elif outcome in ("short", "retry"):
            p.attempts += 1
            results[p] = REQUEUE if p.attempts < PLACEMENT_ATTEMPTS else ALONE
        else:
            results[p] = ALONE
    for p in group:
        if p in results:
            continue
        stored, leader = by_claim.get(p.claim), leaders.get(p.claim)
        if stored is None or leader is None:
            results[p] = REQUEUE  # the leader stored nothing: this copy goes next, as after a rollback
        elif p.fingerprint == leader.fingerprint:
            results[p] = stored
        else:
            results[p] = _conflict(p.key)
    return results
