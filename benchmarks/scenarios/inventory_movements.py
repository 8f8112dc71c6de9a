"""Stock movements on spread (sku, location) levels (issue 2), next to pgbench's spread UPDATE.

Each movement is one durable transaction, like a pgbench UPDATE, but it also claims an
Idempotency-Key, locks and updates the level, appends the movement and an outbox event, and stores
the response. Aim: >= 30% of pgbench's best spread-update tps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import orjson

from benchmarks.loadgen import LoadSpec, Request
from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.inventory_data import inventory_data

AIM_RATIO = 0.30
JSON = {"Content-Type": "application/json"}


@dataclass
class MovementWorkload:
    pairs: list[tuple[str, str]]
    rng: random.Random = field(default_factory=random.Random)
    prefix: str = ""
    sent: int = 0

    def start(self, rng: random.Random, worker_id: str) -> None:
        self.rng, self.prefix = rng, f"bench-{worker_id}-{rng.getrandbits(32):08x}"

    def next(self) -> Request:
        sku, location_id = self.rng.choice(self.pairs)
        # Mostly receipts; some adjustments either way (+2/-1 so levels drift up and never hit zero).
        if self.rng.random() < 0.75:
            body = {"sku": sku, "location_id": location_id, "kind": "receipt", "qty": self.rng.randint(1, 12)}
        else:
            body = {"sku": sku, "location_id": location_id, "kind": "adjustment",
                    "qty": self.rng.choice((2, -1)), "reason": "cycle count correction"}
        self.sent += 1
        headers = {**JSON, "Idempotency-Key": f"{self.prefix}-{self.sent}"}
        return Request("POST", "/v1/stock/movements", orjson.dumps(body), headers)


@dataclass(frozen=True)
class MovementsScenario:
    name: str = "inventory.movements"
    services: tuple[str, ...] = ("inventory",)

    def run(self, ctx: Context) -> list[Record]:
        data = inventory_data(ctx)
        seconds, warmup, concurrency = (5.0, 1.0, 32) if ctx.quick else (20.0, 3.0, 32)
        spec = LoadSpec(ctx.url("inventory"), MovementWorkload(data.pairs), concurrency, seconds, warmup,
                        api_key=ctx.key("ops"), ok_statuses=(201,))
        label = f"stock movements, spread c={concurrency}"
        result = ctx.load(spec, label)
        limit = ctx.limit("pgbench spread UPDATE c=")
        record = Record.from_load(label, result, limit,
                                  pairs=len(data.pairs), aim=f"ratio >= {AIM_RATIO:.0%}")
        record.extra["aim_met"] = record.ratio is not None and record.ratio >= AIM_RATIO
        return [record]
