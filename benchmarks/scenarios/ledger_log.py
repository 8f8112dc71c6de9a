"""The embedded ledger (issue 6): batched signed appends, proofs, audit, at 1,000,000 entries.

Appends and the audit run in-process through the port (ledger.port over the restricted pool), the
way finance commits; proofs are served by the ledger service over HTTP (GET /v1/ledger/entries/{seq}:
entry, inclusion proof, checkpoint). Each next to single-core SHA-256 of a 200-byte message measured
in the same run. Aims: append >= 20,000 entries/s, audit >= 200,000 entries/s, proof p99 < 1 ms.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadSpec, Request
from benchmarks.scenarios.base import Context, Record

APPEND_AIM, AUDIT_AIM, PROOF_P99_AIM_MS = 20_000, 200_000, 1.0
BATCH = 1000


def sale_entry(n: int) -> dict[str, Any]:
    """About 200 bytes canonical, like a finance reconciled sale."""
    return {"kind": "reconciled_sale", "business_day": f"2024-05-{1 + n % 28:02d}", "channel": "store",
            "location_id": f"store-{n % 250:04d}", "currency": "EUR", "sales_total": f"{n % 9973}.{n % 100:02d}",
            "order_id": f"order-{n:09d}", "entry_key": f"sale:order-{n:09d}", "run_id": n // 10_000}


async def fill_and_audit(dsn: str, data_dir: Path, entries: int) -> dict[str, float]:
    from ledger.identity import init_identities, load_identity
    from ledger.service.use_cases import member_identity, open_ledger
    from ledger.submit import sign_and_append
    from shared.settings import Settings

    settings = Settings(_env_file=None, database_url=dsn, data_dir=data_dir)  # type: ignore[call-arg]
    init_identities(data_dir)
    # The ledger service's port (it holds the checkpoint key); each batch signed as finance signs its own.
    async with open_ledger(settings, max_size=4, checkpoint_signer=member_identity(settings, "ledger")) as ledger:
        finance = load_identity(data_dir, "finance")
        existing = (await ledger.checkpoint() or {"tree_size": 0})["tree_size"]
        started = time.perf_counter()
        appended = 0
        while existing + appended < entries:
            n = min(BATCH, entries - existing - appended)
            await sign_and_append(ledger, finance, [sale_entry(existing + appended + i) for i in range(n)])
            appended += n
        append_s = time.perf_counter() - started
        await ledger.cut_checkpoint()
        started = time.perf_counter()
        report = await ledger.audit()
        audit_s = time.perf_counter() - started
        assert report.ok, report.summary()
    return {"appended": appended, "append_per_s": appended / append_s if appended else 0.0,
            "audited": report.entries_checked, "audit_per_s": report.entries_checked / audit_s}


@dataclass
class ProofWorkload:
    size: int
    rng: random.Random = field(default_factory=random.Random)

    def start(self, rng: random.Random, worker_id: str) -> None:
        self.rng = rng

    def next(self) -> Request:
        return Request("GET", f"/v1/ledger/entries/{self.rng.randrange(self.size)}", b"", {})


@dataclass(frozen=True)
class LedgerScenario:
    name: str = "ledger.log"
    services: tuple[str, ...] = ("ledger",)

    def run(self, ctx: Context) -> list[Record]:
        entries = 100_000 if ctx.quick else 1_000_000
        data_dir = ctx.stack.root / "data"  # the ledger service's identities, so its checkpoints verify
        figures = asyncio.run(fill_and_audit(ctx.stack.dsn, data_dir, entries))
        sha = ctx.limit("sha256")
        records = [
            Record(f"ledger appends, batches of {BATCH}, signed", figures["append_per_s"], "entries/s",
                   limit_name=sha.name if sha else None, limit_value=sha.value if sha else None,
                   extra={"entries": entries, "aim": f">= {APPEND_AIM} entries/s"}),
            Record(f"ledger audit of {figures['audited']:.0f} entries", figures["audit_per_s"], "entries/s",
                   limit_name=sha.name if sha else None, limit_value=sha.value if sha else None,
                   extra={"aim": f">= {AUDIT_AIM} entries/s"}),
        ]
        seconds, warmup, concurrency = (5.0, 1.0, 8) if ctx.quick else (15.0, 2.0, 8)
        spec = LoadSpec(ctx.url("ledger"), ProofWorkload(entries), concurrency, seconds, warmup,
                        api_key=ctx.key("auditor"), ok_statuses=(200,))
        label = f"ledger proofs (GET entry + inclusion proof) at {entries} entries, c={concurrency}"
        records.append(Record.from_load(label, ctx.load(spec, label), None,
                                        aim=f"p99 < {PROOF_P99_AIM_MS} ms"))
        return records
