"""The machine's limits, measured in the same run: pgbench on the same PostgreSQL, and SHA-256.

pgbench runs custom scripts on a scratch table so its figures describe this cluster with its durable
settings: one transaction per UPDATE, committed with fsync, like every stock movement is.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

import asyncpg
from yarl import URL

from shared.embedded_db import pg_binary

PGBENCH_ROWS = 100_000
SPREAD = f"\\set id random(1, {PGBENCH_ROWS})\n"
SCRIPTS: dict[str, str] = {
    # Every client updates the same row: lock contention plus commit latency, the flash-sale shape.
    "hot UPDATE": "UPDATE bench_pgbench SET v = v + 1 WHERE id = 1;\n",
    # Clients update random rows of 100k: no contention, so the WAL flush (group commit) is the limit.
    "spread UPDATE": SPREAD + "UPDATE bench_pgbench SET v = v + 1 WHERE id = :id;\n",
    # The same with a NOTIFY in the transaction, as every outbox write did until core/0002 dropped
    # core.events' trigger: PostgreSQL serialises the commits of notifying transactions on one lock held
    # across the WAL flush, so this is the ceiling of any write path that notifies, however light its
    # SQL. Kept as the measured reason the writers' path does not notify (README, the event hub).
    "spread UPDATE + NOTIFY": SPREAD + "BEGIN;\nUPDATE bench_pgbench SET v = v + 1 WHERE id = :id;\n"
                                       "SELECT pg_notify('bench_pgbench', '');\nEND;\n",
}
TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


@dataclass(frozen=True)
class Limit:
    name: str
    value: float
    unit: str
    detail: dict[str, float | int | str]


async def create_scratch_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS bench_pgbench;"
            "CREATE TABLE bench_pgbench (id int PRIMARY KEY, v bigint NOT NULL) WITH (fillfactor = 80);"
            f"INSERT INTO bench_pgbench SELECT g, 0 FROM generate_series(1, {PGBENCH_ROWS}) g;"
        )
        await conn.execute("VACUUM ANALYZE bench_pgbench")  # not in a transaction block, so on its own
    finally:
        await conn.close()


def pgbench(dsn: str, script: str, clients: int, seconds: float) -> tuple[float, float]:
    """(tps, average latency in ms) of `script` with `clients` connections for `seconds`."""
    url = URL(dsn)  # the password goes in the environment, not on a command line every local user can read
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        done = subprocess.run(
            [str(pg_binary("pgbench")), "-n", "-M", "prepared", "-f", f.name, "-c", str(clients),
             "-j", str(min(2, clients)), "-T", str(max(1, round(seconds))),
             "-h", url.host or "127.0.0.1", "-p", str(url.port), "-U", url.user or "postgres",
             url.path.lstrip("/") or "postgres"],
            capture_output=True, text=True, check=False, env={**os.environ, "PGPASSWORD": url.password or ""},
        )
    finally:
        os.unlink(f.name)
    tps, latency = TPS.search(done.stdout), LATENCY.search(done.stdout)
    if done.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return float(tps.group(1)), float(latency.group(1)) if latency else float("nan")


def pgbench_limits(dsn: str, client_counts: list[int], seconds: float) -> list[Limit]:
    limits = []
    for name, script in SCRIPTS.items():
        for clients in client_counts:
            tps, latency_ms = pgbench(dsn, script, clients, seconds)
            limits.append(Limit(f"pgbench {name} c={clients}", tps, "tps",
                                {"clients": clients, "latency_avg_ms": latency_ms, "seconds": seconds}))
    return limits


def sha256_limit(seconds: float, message_bytes: int = 200) -> Limit:
    """Single-core SHA-256 throughput over `message_bytes` messages (the ledger hashes small entries)."""
    message = os.urandom(message_bytes)
    sha256 = hashlib.sha256
    count, batch = 0, 10_000
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(batch):
            sha256(message).digest()
        count += batch
    return Limit(f"sha256 {message_bytes} B, 1 core", count / elapsed, "hashes/s",
                 {"message_bytes": message_bytes, "seconds": round(elapsed, 2)})


def best(limits: list[Limit], prefix: str) -> Limit | None:
    """The highest of the limits whose name starts with `prefix` (e.g. the best client count)."""
    matching = [limit for limit in limits if limit.name.startswith(prefix)]
    return max(matching, key=lambda limit: limit.value) if matching else None


