"""Housekeeping: transient rows leave once their retention window has passed, without blocking writers.

Each job deletes a few thousand rows per statement (`housekeeping_batch_rows`), each batch in its own
short transaction, found through an index in age or position order, rows locked with SKIP LOCKED where
a writer may hold one, and rests between batches as long as the last one took. A writer never waits
for the pruner: deleting takes row locks on the rows deleted only (which no writer touches: they are
past their window), never a table lock, and inserts go elsewhere.
Partitions would drop old rows for free, but core.events' order is its position (txid, id), not time,
and a partition may only be dropped once every row in it has been passed by every consumer; a DETACH
also takes a lock that queues behind (and then in front of) every writer. Batches need neither.

One pruner works at a time across replicas: each batch takes a transaction-level advisory lock for its
job and a replica that finds it taken leaves this pass to the holder. Rows pruned, batch durations and
the age of the oldest row left are exported as Prometheus metrics (/metrics).

Jobs: core.idempotency_keys (every service runs it: any one of them keeps the table pruned), and in
e-commerce the outbox (only what every durable consumer cursor has passed) and the webhook delivery log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from shared.db import Connection, Pool, transaction
from shared.http.keys import POOL
from shared.logging import get_logger
from shared.outbox import Position, delete_events, oldest_event_age_s, outbox_head
from shared.settings import Settings

log = get_logger("omnistock.housekeeping")

LOCK_CLASS = 7_277_002  # pg_try_advisory_xact_lock(LOCK_CLASS, job.lock): fixed, every process agrees

PRUNED = Counter("omnistock_housekeeping_pruned_rows_total", "Rows removed by housekeeping", ["table"])
OLDEST = Gauge("omnistock_housekeeping_oldest_retained_age_seconds",
               "Age of the oldest row housekeeping has left in the table", ["table"])
BATCH = Histogram("omnistock_housekeeping_batch_seconds", "Duration of one housekeeping batch transaction",
                  ["table"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


@dataclass(frozen=True)
class Batch:
    deleted: int
    next_after: int | None  # where this pass's next batch starts (a job's own key); None: the pass is done


class Job(Protocol):
    table: str  # the metric label
    lock: int  # the advisory lock's second key

    async def prune(self, conn: Connection, limit: int, after: int) -> Batch: ...

    async def oldest_age_s(self, db: Pool | Connection) -> float | None: ...


# --- idempotency records ----------------------------------------------------------------------------

# Oldest first through idempotency_keys_created; by ctid, so the DELETE finds each row without a second
# index lookup. SKIP LOCKED: a row some writer has locked is left for the next pass.
DELETE_IDEMPOTENCY = """
DELETE FROM core.idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM core.idempotency_keys
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at LIMIT $2
    FOR UPDATE SKIP LOCKED))
"""


@dataclass(frozen=True)
class IdempotencyRecords:
    """Records older than `retention_s`: a retry with such a key is a new request (README, Housekeeping)."""

    retention_s: float
    table: str = "core.idempotency_keys"
    lock: int = 1

    async def prune(self, conn: Connection, limit: int, after: int) -> Batch:
        deleted = int((await conn.execute(DELETE_IDEMPOTENCY, self.retention_s, limit)).split()[-1])
        return Batch(deleted, 0 if deleted == limit else None)

    async def oldest_age_s(self, db: Pool | Connection) -> float | None:
        return await db.fetchval(
            "SELECT extract(epoch FROM now() - min(created_at))::float8 FROM core.idempotency_keys")


# --- the outbox -------------------------------------------------------------------------------------


def prunable_prefix(rows: Sequence[tuple[int, int, bool]]) -> list[tuple[int, int]]:
    """The leading (txid, id) of `rows` (in position order) that are past the window (`rows[i][2]`).

    Only a prefix: an event still inside the window keeps every later one, so the outbox is always
    whole after its oldest retained event, and a stream resumed from a retained id misses nothing even
    where a transaction's events were created later than a later transaction's."""
    prefix = []
    for txid, event_id, expired in rows:
        if not expired:
            break
        prefix.append((txid, event_id))
    return prefix


@dataclass(frozen=True)
class OutboxEvents:
    """Events every durable consumer has passed, `retention_s` after they were written.

    `passed_by_all` gives the oldest durable cursor (in e-commerce: the projector's and the webhook
    fan-out's rows in ecommerce.cursors); nothing after it is ever touched. Live streams have no durable
    cursor: they resume by Last-Event-ID anywhere inside the window, or are told to resync."""

    retention_s: float
    passed_by_all: Callable[[Connection], Awaitable[Position]]
    table: str = "core.events"
    lock: int = 2

    async def prune(self, conn: Connection, limit: int, after: int) -> Batch:
        through = await self.passed_by_all(conn)
        prefix = prunable_prefix(await outbox_head(conn, through, limit, self.retention_s))
        if prefix:
            await delete_events(conn, prefix)
        return Batch(len(prefix), 0 if len(prefix) == limit else None)

    async def oldest_age_s(self, db: Pool | Connection) -> float | None:
        return await oldest_event_age_s(db)


# --- running ----------------------------------------------------------------------------------------


async def prune(pool: Pool, job: Job, limit: int) -> int:
    """One pass of `job`: batch after batch until nothing is left to prune; the rows pruned. Stops at
    once if another process holds the job's lock (it is doing this pass)."""
    total, after = 0, 0
    while True:
        started = time.perf_counter()
        async with transaction(pool) as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", LOCK_CLASS, job.lock):
                break
            batch = await job.prune(conn, limit, after)
        took = time.perf_counter() - started
        BATCH.labels(job.table).observe(took)
        total += batch.deleted
        PRUNED.labels(job.table).inc(batch.deleted)
        if batch.next_after is None:
            break
        after = batch.next_after
        # Rest as long as the batch took: a backlog is worked off at half the database's pace, and the
        # writers' commits never queue behind one delete's WAL after another.
        await asyncio.sleep(took)
    age = await job.oldest_age_s(pool)
    OLDEST.labels(job.table).set(age if age is not None else 0.0)
    return total


async def run_pass(pool: Pool, jobs: Sequence[Job], limit: int) -> dict[str, int]:
    """Every job once; rows pruned per table. A failing job is logged and the others still run."""
    pruned = {}
    for job in jobs:
        try:
            pruned[job.table] = await prune(pool, job, limit)
        except Exception:  # a background loop must outlive any failure
            log.exception("housekeeping failed; next pass retries", table=job.table)
    return pruned


async def run_housekeeping(pool: Pool, jobs: Sequence[Job], settings: Settings) -> None:
    """Forever: wait an interval, then a pass (the first waits too: a start-up is busy enough)."""
    while True:
        await asyncio.sleep(settings.housekeeping_interval_s)
        pruned = await run_pass(pool, jobs, settings.housekeeping_batch_rows)
        if any(pruned.values()):
            log.info("housekeeping pass", **{table.replace(".", "_"): n for table, n in pruned.items()})


def housekeeping_context(jobs: Sequence[Job], settings: Settings
                         ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running the housekeeping loop over `jobs` on the app's pool."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run_housekeeping(app[POOL], jobs, settings), name="housekeeping")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


def core_jobs(settings: Settings) -> list[Job]:
    """What every service prunes: the shared idempotency records."""
    return [IdempotencyRecords(settings.idempotency_retention_s)]
