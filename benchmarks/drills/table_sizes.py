"""Table sizes during the soak: the transient tables housekeeping prunes must level off under a short
retention window, while the durable ones (orders, movements) grow with the orders, as they should.

Also a local webhook receiver (so the delivery log fills as in production) and the housekeeping
metrics the services export (rows pruned, batch durations: the cost of a delete batch)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from shared.embedded_db import free_port

TRANSIENT = ["core.idempotency_keys", "core.events", "ecommerce.webhook_deliveries", "ecommerce.webhook_attempts"]
DURABLE = ["orders.orders", "orders.order_lines", "orders.allocations", "orders.status_history",
           "inventory.stock_movements"]
LEVEL_MIB_PER_MIN = 0.5  # below this a table has stopped growing (free-space reuse jitters by a few pages)



def slope_mib_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / var if var else 0.0


SIZES_SQL = "SELECT t AS name, pg_total_relation_size(t::regclass) AS bytes FROM unnest($1::text[]) AS t"
ROWS_SQL = """
SELECT (SELECT count(*) FROM core.idempotency_keys) AS "core.idempotency_keys",
       (SELECT count(*) FROM core.events) AS "core.events",
       (SELECT count(*) FROM ecommerce.webhook_deliveries) AS "ecommerce.webhook_deliveries",
       (SELECT count(*) FROM ecommerce.webhook_attempts) AS "ecommerce.webhook_attempts",
       (SELECT count(*) FROM orders.orders) AS "orders.orders"
"""


def sample_tables(dsn: str, every_s: float, stop: threading.Event, began: float) -> list[dict[str, Any]]:
    """Every table's total size (heap, indexes, TOAST) and the transient tables' row counts, every `every_s`."""

    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        samples = []
        try:
            while not stop.is_set():
                at = round(time.monotonic() - began, 1)
                rows = dict(await conn.fetchrow(ROWS_SQL))
                for r in await conn.fetch(SIZES_SQL, TRANSIENT + DURABLE):
                    samples.append({"t_s": at, "table": r["name"], "mib": round(r["bytes"] / 2**20, 3),
                                    "rows": rows.get(r["name"])})
                await asyncio.to_thread(stop.wait, every_s)
        finally:
            await conn.close()
        return samples

    return asyncio.run(run())


def levelling(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per table: size at the start, middle and end, growth per minute in the first and last third,
    and (transient tables) whether it levelled off: the last third grows less than a quarter as fast
    as the first, or less than LEVEL_MIB_PER_MIN."""
    verdicts = {}
    for name in TRANSIENT + DURABLE:
        points = [(s["t_s"], s["mib"]) for s in samples if s["table"] == name and s["t_s"] >= warmup_s]
        rows = [s["rows"] for s in samples if s["table"] == name]
        if not points:
            continue
        third = max(2, len(points) // 3)
        first, last = slope_mib_per_min(points[:third]), slope_mib_per_min(points[-third:])
        verdict: dict[str, Any] = {
            "start_mib": points[0][1], "middle_mib": points[len(points) // 2][1], "end_mib": points[-1][1],
            "max_mib": max(m for _, m in points),
            "first_third_mib_per_min": round(first, 3), "last_third_mib_per_min": round(last, 3)}
        if name in TRANSIENT:
            verdict["end_rows"] = rows[-1] if rows else None
            verdict["levelled_off"] = last <= LEVEL_MIB_PER_MIN or last <= 0.25 * first
        verdicts[name] = verdict
    return verdicts


def housekeeping_metrics(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Rows pruned and batch time per table, summed over the services' /metrics."""
    found: dict[str, dict[str, float]] = {}
    for url in urls.values():
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310 (our own service)
            text = resp.read().decode()
        for line in text.splitlines():
            for metric, field in (("omnistock_housekeeping_pruned_rows_total", "rows_pruned"),
                                  ("omnistock_housekeeping_batch_seconds_sum", "batch_seconds"),
                                  ("omnistock_housekeeping_batch_seconds_count", "batches")):
                if line.startswith(metric + "{"):
                    table = line.split('table="', 1)[1].split('"', 1)[0]
                    found.setdefault(table, {}).setdefault(field, 0.0)
                    found[table][field] += float(line.rsplit(" ", 1)[1])
    for stats in found.values():
        if stats.get("batches"):
            stats["mean_batch_ms"] = round(1000 * stats["batch_seconds"] / stats["batches"], 2)
    return found


class WebhookReceiver:
    """A local endpoint answering every delivery 204, so the delivery log fills and empties as it would."""

    def __init__(self) -> None:
        self.received = 0

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def plot_tables(samples: list[dict[str, Any]], path: Path, seconds: float, retention_s: float) -> Path:
    """Each table's size against time: transient tables solid, durable ones dashed (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for name in TRANSIENT + DURABLE:
        mine = [s for s in samples if s["table"] == name]
        ax.plot([s["t_s"] for s in mine], [s["mib"] for s in mine], label=name,
                linestyle="-" if name in TRANSIENT else "--")
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("total relation size (MiB)")
    ax.set_title(f"Table sizes under {seconds / 60:.0f} min of mixed order load, {retention_s:.0f} s retention")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
