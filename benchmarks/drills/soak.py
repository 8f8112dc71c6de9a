"""`python -m benchmarks.drills.soak` (`make soak`): the benchmark's mixed order load (orders.mixed) for
SOAK_SECONDS (default 600) against a fresh stack, sampling each service's RSS and the size of the main
tables every SOAK_SAMPLE_S (default 5) seconds. Transient rows (idempotency records, outbox events,
webhook deliveries to a local receiver) are kept SOAK_RETENTION_S (default 60) and housekeeping runs
every SOAK_HOUSEKEEPING_S (default 10), so their tables must level off (benchmarks/drills/table_sizes.py).

Memory has levelled off when the last third of the run grows no faster than a quarter of the first
third, or less than LEVEL_MIB_PER_MIN absolutely (allocator noise). Writes
benchmarks/results/soak-<UTC timestamp>.csv (every RSS sample), .json (summary, with every table sample),
.png (RSS against time) and -tables.png (table sizes against time); exits 1 if a service's memory or a
transient table kept growing, or an acknowledged order is missing or stock is
oversold or off its movements afterwards (benchmarks/scenarios/correctness.py).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.cpu import machine
from benchmarks.drills import table_sizes
from benchmarks.drills.table_sizes import WebhookReceiver, slope_mib_per_min
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.report import RESULTS_DIR, git_commit
from benchmarks.scenarios.correctness import broken, check_orders
from benchmarks.scenarios.orders_data import seed as seed_orders_data
from benchmarks.scenarios.orders_mixed import MixedOrders
from benchmarks.stack import Stack

SERVICES = ["inventory", "orders", "ecommerce"]  # e-commerce follows every stock change the orders make
LEVEL_MIB_PER_MIN = 1.0


def sample_rss(pids: dict[str, int], every_s: float, stop: threading.Event, began: float) -> list[dict[str, Any]]:
    processes = {name: psutil.Process(pid) for name, pid in pids.items()}
    samples = []
    while not stop.is_set():
        at = round(time.monotonic() - began, 1)
        for name, process in processes.items():
            samples.append({"t_s": at, "service": name, "rss_mib": round(process.memory_info().rss / 2**20, 2)})
        stop.wait(every_s)
    return samples


def levelling(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for name in sorted({s["service"] for s in samples}):
        points = [(s["t_s"], s["rss_mib"]) for s in samples if s["service"] == name and s["t_s"] >= warmup_s]
        third = max(2, len(points) // 3)
        first, last = slope_mib_per_min(points[:third]), slope_mib_per_min(points[-third:])
        verdicts[name] = {
            "start_mib": points[0][1] if points else None, "end_mib": points[-1][1] if points else None,
            "max_mib": max((m for _, m in points), default=None),
            "first_third_mib_per_min": round(first, 2), "last_third_mib_per_min": round(last, 2),
            "levelled_off": last <= LEVEL_MIB_PER_MIN or last <= 0.25 * first,
        }
    return verdicts


def housekeeping_env(retention_s: float, interval_s: float) -> dict[str, str]:
    """A short retention window for every transient table, and a housekeeping timer to match."""
    return {"OMNISTOCK_IDEMPOTENCY_RETENTION_S": str(retention_s), "OMNISTOCK_EVENT_RETENTION_S": str(retention_s),
            "OMNISTOCK_WEBHOOK_DELIVERED_RETENTION_S": str(retention_s),
            "OMNISTOCK_WEBHOOK_DEAD_RETENTION_S": str(retention_s),
            "OMNISTOCK_HOUSEKEEPING_INTERVAL_S": str(interval_s),
            # The soak's webhook receiver is local; changes of one SKU within a second go as one delivery.
            "OMNISTOCK_WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]', "OMNISTOCK_WEBHOOK_COALESCE_S": "1.0"}


def soak(seconds: float, sample_s: float, concurrency: int, retention_s: float, interval_s: float) -> dict[str, Any]:
    os.environ.update(housekeeping_env(retention_s, interval_s))  # the stack's processes inherit it
    stack = Stack()
    try:
        with WebhookReceiver() as receiver:
            stack.start_database()
            stack.omnistock("migrate")
            stack.start_services(SERVICES)
            subscribe(stack.services["ecommerce"].url, stack.admin_key, receiver.url)
            # The benchmark's own mixed load and dataset (10,000 SKUs x 50 locations, 1-5 line orders).
            data = asyncio.run(seed_orders_data(stack.dsn))
            spec = LoadSpec(stack.services["orders"].url, MixedOrders(data.skus), concurrency=concurrency,
                            duration_s=seconds, warmup_s=2.0, api_key=stack.create_key("shop"), timeout_s=15.0,
                            ok_statuses=(201,), collect_ids=True)
            stop = threading.Event()
            began = time.monotonic()
            samples: list[dict[str, Any]] = []
            tables: list[dict[str, Any]] = []
            pids = {name: service.process.pid for name, service in stack.services.items()}
            samplers = [
                threading.Thread(target=lambda: samples.extend(sample_rss(pids, sample_s, stop, began))),
                threading.Thread(target=lambda: tables.extend(
                    table_sizes.sample_tables(stack.dsn, sample_s, stop, began)))]
            for sampler in samplers:
                sampler.start()
            try:
                result = run_load(spec)
            finally:
                stop.set()
                for sampler in samplers:
                    sampler.join()
            pruned = table_sizes.housekeeping_metrics({n: s.url for n, s in stack.services.items()})
            received = receiver.received
        checked = check_orders(stack.dsn, result.acknowledged)
        # Tables grow until the first window has passed and the first pass has pruned.
        warmup = retention_s + interval_s + sample_s
        return {"samples": samples, "tables": tables, "load": _load_summary(result), "correctness": checked,
                "problems": broken(checked), "memory": levelling(samples, 2.0 + sample_s),
                "table_sizes": table_sizes.levelling(tables, warmup), "housekeeping": pruned,
                "webhooks_received": received}
    finally:
        stack.close()


def subscribe(ecommerce_url: str, admin_key: str, receiver_url: str) -> None:
    body = json.dumps({"url": receiver_url, "events": ["availability.changed"], "secret": "soak-" + "s" * 20})
    request = urllib.request.Request(f"{ecommerce_url}/v1/webhooks", data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {admin_key}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (our own service)
        assert resp.status == 201, resp.read()


def _load_summary(result: LoadResult) -> dict[str, Any]:
    return {"requests": result.requests, "ok": result.ok, "seconds": round(result.seconds, 1),
            "throughput": round(result.throughput, 1), "p50_ms": result.percentile_ms(0.5),
            "p99_ms": result.percentile_ms(0.99), "statuses": {str(k): v for k, v in result.statuses.items()},
            "errors": dict(result.errors)}


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    sample_s = float(os.environ.get("SOAK_SAMPLE_S", "5"))
    concurrency = int(os.environ.get("SOAK_CONCURRENCY", "16"))
    retention_s = float(os.environ.get("SOAK_RETENTION_S", "60"))
    interval_s = float(os.environ.get("SOAK_HOUSEKEEPING_S", "10"))
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"soak: {seconds:.0f} s of mixed order load, {concurrency} clients, RSS and table sizes every"
          f" {sample_s:.0f} s; transient rows kept {retention_s:.0f} s, housekeeping every {interval_s:.0f} s")
    found = soak(seconds, sample_s, concurrency, retention_s, interval_s)
    RESULTS_DIR.mkdir(exist_ok=True)
    csv_path = RESULTS_DIR / f"soak-{started_at}.csv"
    with csv_path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["t_s", "service", "rss_mib"])
        writer.writeheader()
        writer.writerows(found.pop("samples"))
    tables = found.pop("tables")
    summary = {"started_at": started_at, "seconds": seconds, "sample_s": sample_s, "concurrency": concurrency,
               "retention_s": retention_s, "housekeeping_interval_s": interval_s,
               "machine": machine(), "git_commit": git_commit(), "level_mib_per_min": LEVEL_MIB_PER_MIN,
               **found, "table_samples": tables}
    json_path = Path(RESULTS_DIR / f"soak-{started_at}.json")
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    load = found["load"]
    print(f"load: {load['throughput']:.0f} req/s, p50 {load['p50_ms'] or 0:.1f} ms, p99 {load['p99_ms'] or 0:.1f} ms,"
          f" statuses {load['statuses']}, errors {load['errors']}")
    for name, verdict in found["memory"].items():
        print(f"{name:<10} RSS {verdict['start_mib']} -> {verdict['end_mib']} MiB (max {verdict['max_mib']}),"
              f" slope first third {verdict['first_third_mib_per_min']} MiB/min,"
              f" last third {verdict['last_third_mib_per_min']} MiB/min:"
              f" {'levelled off' if verdict['levelled_off'] else 'STILL GROWING'}")
    for name, verdict in found["table_sizes"].items():
        level = "" if "levelled_off" not in verdict else (
            ": levelled off" if verdict["levelled_off"] else ": STILL GROWING")
        print(f"{name:<30} {verdict['start_mib']:>8.2f} / {verdict['middle_mib']:>8.2f} / {verdict['end_mib']:>8.2f}"
              f" MiB (start/middle/end), last third {verdict['last_third_mib_per_min']} MiB/min{level}")
    for table, stats in found["housekeeping"].items():
        print(f"pruned {table}: {stats.get('rows_pruned', 0):.0f} rows in {stats.get('batches', 0):.0f} batches,"
              f" mean batch {stats.get('mean_batch_ms', 0)} ms")
    print(f"webhooks received: {found['webhooks_received']}")
    print(f"checked in the database after the soak: {found['correctness']}; problems: {found['problems'] or 'none'}")
    png_path = plot_rss(list(csv.DictReader(csv_path.open())), RESULTS_DIR / f"soak-{started_at}.png", seconds)
    tables_png = table_sizes.plot_tables(tables, RESULTS_DIR / f"soak-{started_at}-tables.png", seconds, retention_s)
    print(f"wrote {csv_path}, {json_path}, {png_path} and {tables_png}")
    levelled = all(v["levelled_off"] for v in found["memory"].values())
    tables_levelled = all(v.get("levelled_off", True) for v in found["table_sizes"].values())
    return 0 if levelled and tables_levelled and not found["problems"] else 1


def plot_rss(samples: list[dict[str, Any]], path: Path, seconds: float) -> Path:
    """Each service's RSS against time, one line per service (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name in sorted({s["service"] for s in samples}):
        mine = [s for s in samples if s["service"] == name]
        ax.plot([float(s["t_s"]) for s in mine], [float(s["rss_mib"]) for s in mine], label=name)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"RSS under {seconds / 60:.0f} minutes of mixed order load")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
