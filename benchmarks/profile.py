"""Optional: sample the services with py-spy during each measured load (`--profile`).

Writes collapsed stacks (flamegraph input) per load and service under results/profiles/, and
summarises the functions where the service spent its samples, so a slow scenario names its culprit.
PostgreSQL's side comes from pg_stat_statements (loaded only in profiled runs): the statements that
took the most execution time during the load.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

PY_SPY = Path(sys.executable).with_name("py-spy")


def available() -> bool:
    return PY_SPY.exists() or shutil.which("py-spy") is not None


TOP_STATEMENTS = """
SELECT query, calls, total_exec_time, max_exec_time, rows, sum(total_exec_time) OVER () AS all_time
  FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1
"""


@dataclass
class Profiler:
    out_dir: Path
    dsn: str | None = None  # a database with pg_stat_statements preloaded, or None
    native: bool = False  # C frames too (py-spy --native pauses the process to unwind it)
    running: list[tuple[str, Path, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, label: str, pids: dict[str, int], seconds: float) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dsn:
            asyncio.run(_reset_statements(self.dsn))
        for service, pid in pids.items():
            path = self.out_dir / f"{_slug(label)}.{service}.txt"
            command = [str(PY_SPY if PY_SPY.exists() else "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                       "--rate", "200", "--duration", str(max(1, round(seconds))), "--output", str(path),
                       *(["--native"] if self.native else ["--nonblocking", "--gil"])]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running.append((service, path, process))

    def finish(self) -> dict[str, Any]:
        """Wait for the samplers; return each service's top functions by share of samples, and
        PostgreSQL's top statements by share of execution time."""
        summary: dict[str, Any] = {}
        for service, path, process in self.running:
            process.wait(timeout=60)
            summary[service] = top_functions(path)
        self.running.clear()
        if self.dsn:
            summary["postgres"] = {"statements": asyncio.run(top_statements(self.dsn))}
        return summary


async def _reset_statements(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def top_statements(dsn: str, count: int = 12) -> list[dict[str, Any]]:
    """The statements with the most execution time since the last reset: share, calls, ms per call
    (mean and max: a mean far below the max is a statement that only sometimes goes wrong)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(TOP_STATEMENTS, count)
    finally:
        await conn.close()
    return [{"query": " ".join(r["query"].split())[:200], "calls": r["calls"],
             "share": round(r["total_exec_time"] / r["all_time"], 3) if r["all_time"] else 0.0,
             "ms_per_call": round(r["total_exec_time"] / r["calls"], 3) if r["calls"] else 0.0,
             "max_ms": round(r["max_exec_time"], 3),
             "rows_per_call": round(r["rows"] / r["calls"], 1) if r["calls"] else 0.0} for r in rows]


def top_functions(path: Path, count: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Where the samples went: leaf functions (self) and callers below the entry points (inclusive)."""
    if not path.exists():
        return {}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n, frames = int(samples), stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {}
    # Frames present in nearly every sample are the entry points (main, run, the loop): no news there.
    callers = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:count]
    return {"self": [(f, round(n / total, 3)) for f, n in own.most_common(count)],
            "inclusive": [(f, round(n / total, 3)) for f, n in callers],
            "samples": [("total", float(total))]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")
