"""`python -m benchmarks.drills.prune_cost`: what a housekeeping delete costs, and what writers feel.

On a fresh durable PostgreSQL: PRUNE_EVENTS (default 1,000,000) outbox events and PRUNE_RECORDS
(default 200,000) idempotency records, all past their window, every consumer cursor at the head. Then
PRUNE_WRITERS (8) writers each insert an event and an idempotency record per transaction, for
PRUNE_PHASE_S (10) seconds without housekeeping and again while it prunes everything in batches of
PRUNE_BATCH (5,000). Reports the rows pruned per second, each batch's duration, and the writers'
commit latency in both phases; writes benchmarks/results/prune-cost-<UTC>.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import prometheus_client

from benchmarks.cpu import machine
from benchmarks.report import RESULTS_DIR, git_commit
from benchmarks.stack import Stack
from services.ecommerce.retention import passed_by_all
from shared.db import create_pool
from shared.housekeeping import IdempotencyRecords, Job, OutboxEvents, prune

FILL = """
INSERT INTO core.events (topic, key, payload, created_at)
SELECT 'stock.changed', 'SKU-' || (n % 10000), jsonb_build_object('sku', 'SKU-' || (n % 10000),
       'location_id', 'store-' || (n % 50), 'on_hand', n % 100, 'reserved', 0, 'available', n % 100),
       now() - interval '10 days' + n * interval '1 millisecond'
FROM generate_series(1, $1) AS n;
"""
FILL_RECORDS = """
INSERT INTO core.idempotency_keys (scope, key, request_hash, status, response, created_at)
SELECT 'orders.create|shop', 'k-' || n, '\\x00', 201, jsonb_build_object('pad', repeat('x', 1000)),
       now() - interval '2 days' + n * interval '1 millisecond'
FROM generate_series(1, $1) AS n;
"""
WRITE = """
WITH e AS (INSERT INTO core.events (topic, key, payload) VALUES ('stock.changed', 'W', '{}'))
INSERT INTO core.idempotency_keys (scope, key, request_hash, status, response) VALUES ('w', $1, '\\x00', 201, '{}')
"""


def percentile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def writers(pool: asyncpg.Pool, count: int, seconds: float, tag: str) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await pool.execute(WRITE, f"{tag}-{i}-{n}")
            latencies.append(time.perf_counter() - started)
            n += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return latencies


def _batch_stat(name: str, table: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value(f"omnistock_housekeeping_batch_seconds_{name}",
                                                       {"table": table}) or 0.0


async def prune_all(pool: asyncpg.Pool, jobs: list[Job], batch: int) -> dict[str, Any]:
    """One pass per job, as the loop runs it (resting between batches as long as each took)."""
    out = {}
    for job in jobs:
        started = time.perf_counter()
        rows = await prune(pool, job, batch)
        seconds = time.perf_counter() - started
        batches, in_batches = _batch_stat("count", job.table), _batch_stat("sum", job.table)
        out[job.table] = {"rows": rows, "seconds": round(seconds, 2), "batches": int(batches),
                          "rows_per_s": round(rows / seconds) if seconds else None,
                          "rows_per_s_inside_batches": round(rows / in_batches) if in_batches else None,
                          "mean_batch_ms": round(1000 * in_batches / batches, 1) if batches else None}
    return out


async def measure(dsn: str, events: int, records: int, writer_count: int, phase_s: float, batch: int) -> dict[str, Any]:
    pool = await create_pool(dsn, min_size=2, max_size=writer_count + 4, command_timeout=900)
    try:
        await pool.execute(FILL, events)
        await pool.execute(FILL_RECORDS, records)
        await pool.execute("ANALYZE core.events; ANALYZE core.idempotency_keys")
        await pool.execute("UPDATE ecommerce.cursors SET (txid, event_id) = (SELECT txid, id FROM core.events"
                           " ORDER BY txid DESC, id DESC LIMIT 1)")
        sizes = {t: await pool.fetchval("SELECT pg_total_relation_size($1::regclass)", t)
                 for t in ("core.events", "core.idempotency_keys")}
        quiet = await writers(pool, writer_count, phase_s, "quiet")
        jobs: list[Job] = [OutboxEvents(86_400.0, passed_by_all), IdempotencyRecords(86_400.0)]
        pruning = asyncio.create_task(prune_all(pool, jobs, batch))
        busy = await writers(pool, writer_count, phase_s, "busy")
        pruned = await pruning
        return {
            "events": events, "records": records, "batch_rows": batch, "writers": writer_count, "phase_s": phase_s,
            "bytes_before": sizes, "pruned": pruned,
            "writers_without_pruning": {"commits": len(quiet), "p50_ms": percentile_ms(quiet, 0.5),
                                        "p99_ms": percentile_ms(quiet, 0.99), "max_ms": percentile_ms(quiet, 1.0)},
            "writers_while_pruning": {"commits": len(busy), "p50_ms": percentile_ms(busy, 0.5),
                                      "p99_ms": percentile_ms(busy, 0.99), "max_ms": percentile_ms(busy, 1.0)},
        }
    finally:
        await pool.close()


def main() -> int:
    events = int(os.environ.get("PRUNE_EVENTS", "1000000"))
    records = int(os.environ.get("PRUNE_RECORDS", "200000"))
    writer_count = int(os.environ.get("PRUNE_WRITERS", "8"))
    phase_s = float(os.environ.get("PRUNE_PHASE_S", "10"))
    batch = int(os.environ.get("PRUNE_BATCH", "5000"))
    stack = Stack()
    try:
        stack.start_database()
        stack.omnistock("migrate")
        found = asyncio.run(measure(stack.dsn, events, records, writer_count, phase_s, batch))
    finally:
        stack.close()
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"prune-cost-{started_at}.json"
    path.write_text(json.dumps({"started_at": started_at, "machine": machine(), "git_commit": git_commit(),
                                **found}, indent=2) + "\n")
    for table, stats in found["pruned"].items():
        print(f"pruned {table}: {stats['rows']} rows in {stats['seconds']} s ({stats['rows_per_s']} rows/s with the"
              f" rests; {stats['batches']} batches of up to {batch}, {stats['mean_batch_ms']} ms each,"
              f" {stats['rows_per_s_inside_batches']} rows/s inside them)")
    for phase in ("writers_without_pruning", "writers_while_pruning"):
        w = found[phase]
        print(f"{phase}: {w['commits']} commits, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms, max {w['max_ms']} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
