"""The ledger on Hyperledger Fabric against the embedded backend, same workload, same run (issue 14).

Runs only when Fabric's release binaries are there (OMNISTOCK_FABRIC_BIN); otherwise it returns one
record saying so. It starts a local network of its own (ledger.fabric.network: one Raft orderer, the
retailer's and the audit firm's peers, each with its chaincode process) on this machine.

Workload, identical on both backends: `APPENDERS` concurrent submitters, each signing batches of
`BATCH` reconciled sales (with entry keys, as finance commits them) and appending them through the port
in a closed loop, while a checkpointer cuts a checkpoint every `CHECKPOINT_EVERY_S` (the ledger
service's timer). Measured: entries/s acknowledged, and for each batch the time from the start of its
append to the end of the first checkpoint that covers it (p50, p99). On Fabric each checkpoint is a
transaction endorsed by both peers; the Fabric backend sends whatever batches wait as one transaction.
Then the auditor's side: `ledger verify` of a Fabric export (entries/s).

Aims (the issue's, on this 2-core machine): >= 5,000 entries/s on Fabric, p99 <= 2.5 s from append to
a covering checkpoint. The published anchor is Fabric 2.5 committing ~2,950 blind-write transactions/s
on a 40-core server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.ledger_log import sale_entry

APPEND_AIM, COVER_P99_AIM_S = 5_000, 2.5
APPENDERS, BATCH, CHECKPOINT_EVERY_S = 16, 250, 0.5
PORT_BASE = 7550  # clear of a developer's network (7050) and the tests' (7350, 7380+)
BLOCK_TIMEOUT_MS = 20


@dataclass
class Timeline:
    """Each batch's (started, last seq) and each checkpoint's (finished, tree size)."""

    appends: list[tuple[float, int]]
    checkpoints: list[tuple[float, int]]

    def covering_latencies(self) -> list[float]:
        latencies = []
        for started, last_seq in self.appends:
            covered = next((done for done, size in self.checkpoints if size > last_seq and done >= started), None)
            if covered is not None:
                latencies.append(covered - started)
        return latencies


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def unkeyed_entry(n: int) -> dict[str, Any]:
    return {k: v for k, v in sale_entry(n).items() if k != "entry_key"}


async def drive(ledger: Any, finance: Any, entries: int, offset: int = 0, keyed: bool = True) -> tuple[float, Timeline]:
    """Append `entries` entries with APPENDERS submitters while checkpoints are cut; (seconds, timeline)."""
    from ledger.submit import sign_and_append

    timeline = Timeline([], [])
    next_n = offset
    stop = asyncio.Event()

    async def appender() -> None:
        nonlocal next_n
        while next_n < offset + entries:
            first, next_n = next_n, next_n + BATCH
            make = sale_entry if keyed else unkeyed_entry
            batch = [make(first + i) for i in range(min(BATCH, offset + entries - first))]
            started = time.perf_counter()
            receipts = await sign_and_append(ledger, finance, batch, attempts=50)
            timeline.appends.append((started, receipts[-1].seq))

    async def checkpointer() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECKPOINT_EVERY_S)
            checkpoint = await ledger.cut_checkpoint()
            if checkpoint is not None:
                timeline.checkpoints.append((time.perf_counter(), checkpoint["tree_size"]))

    cutting = asyncio.create_task(checkpointer())
    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(APPENDERS)))
    seconds = time.perf_counter() - started
    stop.set()
    await cutting
    return seconds, timeline


def figures(label: str, entries: int, seconds: float, timeline: Timeline, **extra: Any) -> Record:
    latencies = timeline.covering_latencies()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return Record(label, entries / seconds, "entries/s", p50_ms=p50 * 1000 if p50 is not None else None,
                  p99_ms=p99 * 1000 if p99 is not None else None,
                  extra={"entries": entries, "seconds": round(seconds, 2), "appenders": APPENDERS, "batch": BATCH,
                         "checkpoints": len(timeline.checkpoints), "latency": "append start -> covering checkpoint",
                         **extra})


async def embedded(dsn: str, data_dir: Path, entries: int) -> Record:
    from ledger.identity import init_identities, load_identity
    from ledger.service.use_cases import member_identity, open_ledger
    from shared.settings import Settings

    settings = Settings(_env_file=None, database_url=dsn, data_dir=data_dir)  # type: ignore[call-arg]
    init_identities(data_dir)
    async with open_ledger(settings, max_size=8, checkpoint_signer=member_identity(settings, "ledger")) as ledger:
        existing = (await ledger.cut_checkpoint() or {"tree_size": 0})["tree_size"]
        seconds, timeline = await drive(ledger, load_identity(data_dir, "finance"), entries, offset=10**8 + existing)
    return figures(f"ledger appends, embedded backend, {APPENDERS} x {BATCH}-entry batches", entries, seconds,
                   timeline)


async def on_fabric(fabric_bin: Path, root: Path, entries: int) -> list[Record]:
    from ledger.fabric.backend import open_fabric_ledger
    from ledger.fabric.network import FabricNetwork
    from ledger.identity import init_identities, load_identity
    from ledger.verify import verify_bundle
    from shared.settings import Settings

    # The backend has one transaction in flight at a time (each reads the log's head), so a block never
    # has company to wait for: the orderer cuts it after BLOCK_TIMEOUT_MS rather than the default's 250.
    settings = Settings(_env_file=None, data_dir=root, fabric_bin=fabric_bin, fabric_dir=root / "fabric",  # type: ignore[call-arg]
                        fabric_port_base=PORT_BASE, fabric_batch_timeout_ms=BLOCK_TIMEOUT_MS)
    init_identities(root)
    network = FabricNetwork(settings)
    await asyncio.to_thread(network.up)
    try:
        async with open_fabric_ledger(settings, network.description() or {}) as ledger:
            finance = load_identity(root, "finance")
            await sign_one(ledger, finance)  # the gateway has found both peers before the clock starts
            seconds, timeline = await drive(ledger, finance, entries, offset=1)
            common = {"aim": f">= {APPEND_AIM} entries/s, p99 <= {COVER_P99_AIM_S} s",
                      "policy": settings.fabric_endorsement_policy,
                      "batch_timeout_ms": settings.fabric_batch_timeout_ms}
            appended = figures(f"ledger appends, Fabric backend (2 peers, 1 Raft orderer), {APPENDERS} x "
                               f"{BATCH}-entry batches with entry keys", entries, seconds, timeline, **common)
            # The same without entry keys: no index read and write per entry, the cost of batching alone.
            seconds, timeline = await drive(ledger, finance, 4 * entries, offset=10**7, keyed=False)
            unkeyed = figures(f"ledger appends, Fabric backend, {APPENDERS} x {BATCH}-entry batches without entry "
                              "keys", 4 * entries, seconds, timeline, **common)
            size = (await ledger.checkpoint() or {"tree_size": 0})["tree_size"]
            last = min(size, settings.ledger_max_export_entries) - 1
            started = time.perf_counter()
            bundle = await ledger.export(0, last)
            export_s = time.perf_counter() - started
            started = time.perf_counter()
            report = verify_bundle(bundle, ledger.trust(), endorsers=settings.fabric_checkpoint_endorsers)
            verify_s = time.perf_counter() - started
            assert report.ok, report.summary()
            verified = Record(f"ledger verify of a Fabric export ({report.entries_checked} entries)",
                              report.entries_checked / verify_s, "entries/s",
                              extra={"export_s": round(export_s, 2), "verify_s": round(verify_s, 2)})
    finally:
        await asyncio.to_thread(network.down, purge=True)
    return [appended, unkeyed, verified]


async def sign_one(ledger: Any, finance: Any) -> None:
    from ledger.submit import sign_and_append

    await sign_and_append(ledger, finance, [sale_entry(0)])


@dataclass(frozen=True)
class LedgerFabricScenario:
    name: str = "ledger.fabric"
    services: tuple[str, ...] = ()

    def run(self, ctx: Context) -> list[Record]:
        fabric_bin = os.environ.get("OMNISTOCK_FABRIC_BIN")
        if not fabric_bin:
            return [Record("ledger on Fabric: skipped (set OMNISTOCK_FABRIC_BIN to Fabric 2.5's release binaries)",
                           0.0, "entries/s")]
        entries = 5_000 if ctx.quick else 25_000
        records = [asyncio.run(embedded(ctx.stack.dsn, ctx.stack.root / "fabric-bench-embedded", entries))]
        records += asyncio.run(on_fabric(Path(fabric_bin), ctx.stack.root / "fabric-bench", entries))
        return records
