"""What a scenario is, what it returns, and what it gets to work with.

A scenario is a small module with one object that has a `name`, the `services` it needs and a
`run(ctx)` returning records. Datasets (seeded data) are shared through the context so several
scenarios reuse one seeding, and its duration is reported once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.cpu import CpuMeter
from benchmarks.limits import Limit
from benchmarks.loadgen import LoadResult, LoadSpec, run_load
from benchmarks.profile import Profiler
from benchmarks.stack import Stack


@dataclass
class Record:
    """One line of the results table."""

    scenario: str
    throughput: float
    unit: str = "ops/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    limit_name: str | None = None
    limit_value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.limit_value:
            return None
        return self.throughput / self.limit_value

    @classmethod
    def from_load(cls, scenario: str, result: LoadResult, limit: Limit | None = None, **extra: Any) -> Record:
        # CPU per operation barely moves when other processes share the cores, unlike latency and
        # throughput, so it is the figure to compare between runs on a busy machine.
        per_op = {role: round(1000 * cores / result.throughput, 3) for role, cores in result.cpu.items()
                  if role not in ("machine busy", "other")} if result.throughput else {}
        return cls(
            scenario=scenario, throughput=result.throughput,
            p50_ms=result.percentile_ms(0.50), p99_ms=result.percentile_ms(0.99),
            limit_name=limit.name if limit else None, limit_value=limit.value if limit else None,
            extra={"requests": result.requests, "ok": result.ok, "seconds": round(result.seconds, 2),
                   "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
                   **({"errors": dict(result.errors)} if result.errors else {}),
                   "cpu_cores": result.cpu, "cpu_ms_per_op": per_op, **extra},
        )


@dataclass
class Context:
    stack: Stack
    quick: bool
    limits: list[Limit]
    meter: CpuMeter
    keys: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)  # seconds spent preparing, by step
    load_points: list[dict[str, Any]] = field(default_factory=list)  # latency vs load, for plots
    profiler: Profiler | None = None  # --profile: py-spy samples the services during every load
    profiles: dict[str, Any] = field(default_factory=dict)

    def key(self, role: str) -> str:
        """An API key of `role` (created once per run through `omnistock keys create`)."""
        if role not in self.keys:
            self.keys[role] = self.stack.admin_key if role == "admin" else self.stack.create_key(role)
        return self.keys[role]

    def url(self, service: str) -> str:
        return self.stack.services[service].url

    def dataset(self, name: str, make: Callable[[], Any]) -> Any:
        """Make a dataset once per run (timed as setup step `name`) and hand it to every scenario."""
        if name not in self.datasets:
            started = time.perf_counter()
            self.datasets[name] = make()
            self.setup[name] = round(time.perf_counter() - started, 1)
        return self.datasets[name]

    def load(self, spec: LoadSpec, label: str, series: str | None = None, unit: str = "ops/s",
             aim: tuple[float, float] | None = None) -> LoadResult:
        """Run the load `label`; with `series`, also keep the point for a latency-vs-load plot (`aim`:
        the issue's (throughput, p99 ms), drawn as guide lines)."""
        if self.profiler is not None:
            pids = {name: service.process.pid for name, service in self.stack.services.items()}
            self.profiler.start(label, pids, spec.warmup_s + spec.duration_s)
        result = run_load(spec, self.meter)
        if self.profiler is not None:
            self.profiles[label] = self.profiler.finish()
        if series:
            self.load_points.append({
                "series": series, "label": label, "concurrency": spec.concurrency * spec.processes,
                "throughput": result.throughput, "p50_ms": result.percentile_ms(0.5),
                "p99_ms": result.percentile_ms(0.99), "unit": unit,
                **({"aim": {"throughput": aim[0], "p99_ms": aim[1]}} if aim else {}),
            })
        return result

    def limit(self, prefix: str) -> Limit | None:
        from benchmarks.limits import best

        return best(self.limits, prefix)


class Scenario(Protocol):
    name: str
    services: tuple[str, ...]

    def run(self, ctx: Context) -> list[Record]: ...
