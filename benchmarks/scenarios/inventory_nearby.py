"""Nearby-stock search (issue 2): random SKUs around points near the seeded cities, or from a store.

Aim: p99 <= 10 ms at >= 2,000 qps on 1,000 stores x 100,000 SKUs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from benchmarks.loadgen import LoadSpec, Request
from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.inventory_data import InventoryData, inventory_data
from services.inventory.seed import CITIES

RADIUS_KM = 50
AIM_QPS, AIM_P99_MS = 2000, 10.0


@dataclass
class NearbyWorkload:
    skus: int
    location_ids: list[str]
    by_location: bool
    rng: random.Random = field(default_factory=random.Random)

    def start(self, rng: random.Random, worker_id: str) -> None:
        self.rng = rng

    def next(self) -> Request:
        sku = f"SKU-{self.rng.randint(1, self.skus):06d}"
        if self.by_location:
            origin = f"location_id={self.rng.choice(self.location_ids)}"
        else:
            # Within the ~25 km scatter of a city's stores, where a shopper asking would be.
            _, lat, lon, _ = self.rng.choice(CITIES)
            origin = f"lat={lat + self.rng.uniform(-0.2, 0.2):.5f}&lon={lon + self.rng.uniform(-0.3, 0.3):.5f}"
        return Request("GET", f"/v1/stock/{sku}/nearby?{origin}&radius_km={RADIUS_KM}")


@dataclass(frozen=True)
class NearbyScenario:
    name: str = "inventory.nearby"
    services: tuple[str, ...] = ("inventory",)

    def run(self, ctx: Context) -> list[Record]:
        data = inventory_data(ctx)
        key = ctx.key("ops")
        seconds, warmup = (4.0, 1.0) if ctx.quick else (15.0, 3.0)
        levels = [16] if ctx.quick else [8, 32]
        records = []
        for by_location in (False, True):
            workload = NearbyWorkload(data.skus, [loc for loc, _, _ in data.locations], by_location)
            for concurrency in levels if not by_location else levels[-1:]:
                spec = LoadSpec(ctx.url("inventory"), workload, concurrency, seconds, warmup, api_key=key)
                label = f"nearby {'location_id' if by_location else 'lat/lon'} r={RADIUS_KM}km c={concurrency}"
                result = ctx.load(spec, label, series=None if by_location else "inventory nearby lat/lon")
                records.append(Record.from_load(label, result, **_aim(result.throughput, result.percentile_ms(0.99)),
                                                dataset=_describe(data)))
        return records


def _aim(qps: float, p99_ms: float | None) -> dict[str, object]:
    met = p99_ms is not None and p99_ms <= AIM_P99_MS and qps >= AIM_QPS
    return {"aim": f"p99 <= {AIM_P99_MS:g} ms at >= {AIM_QPS} qps", "aim_met": met}


def _describe(data: InventoryData) -> str:
    return f"{data.stores} stores x {data.skus} SKUs, {data.levels} levels"
