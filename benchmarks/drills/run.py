"""One drill run: real service processes under order (and ledger) traffic, disasters in between.

    steady traffic -> kill -9 every service, start them again -> steady -> restart PostgreSQL -> steady
    -> freeze PostgreSQL (SIGSTOP) -> steady -> stop traffic -> check every promise

kill -9 rounds: each acknowledged order exists as sent and replaying its Idempotency-Key returns it;
levels equal the sum of their movements; reserved equals the open allocations; nothing is oversold.
PostgreSQL rounds (need the cluster's handle): the services recover by themselves (same processes),
/readyz answers 503 during the outage and 200 after, every request during the outage ends quickly
with 503 or a connection error, never a 500 and never past the client timeout; while it is frozen,
never past the services' request deadline. Then the ledger audit must be clean and the e-commerce
projection equal to a from-scratch computation.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.drills import checks
from benchmarks.drills.processes import Services, service_env
from benchmarks.drills.report import DrillReport, create_key
from benchmarks.drills.traffic import (
    Catalog,
    LedgerWriter,
    OrderWriter,
    ReadinessLog,
    TrafficLog,
    Writer,
    probe_readiness,
    seed_catalog,
)
from services import registry
from services.runtime import embedded_service_env
from shared.embedded_db import EmbeddedPostgres
from shared.settings import Settings


@dataclass(frozen=True)
class DrillConfig:
    concurrency: int = 16
    client_timeout_s: float = 15.0
    catalog: Catalog = field(default_factory=Catalog)
    with_ledger: bool = True  # when the ledger service exists
    steady_s: float = 1.5  # traffic before, between and after the disasters
    kill_rounds: int = 1
    kill_down_s: float = 0.5
    pg_rounds: int = 1
    pg_modes: tuple[str, ...] = ("immediate",)  # pg_ctl stop modes, cycled over the rounds
    pg_down_s: float = 2.0
    # SIGSTOP every PostgreSQL process for freeze_s (a paused VM, a partition that drops packets): the
    # server neither answers nor refuses. Off by default: see benchmarks/drills/README.md for what it shows.
    freeze_rounds: int = 0
    freeze_s: float = 30.0
    # The services' OMNISTOCK_REQUEST_TIMEOUT_S: while PostgreSQL is frozen every request must still be
    # answered (503) within it, plus a second of slack for the client's own scheduling.
    request_timeout_s: float = Settings.model_fields["request_timeout_s"].default
    recover_within_s: float = 30.0


@dataclass
class PgRound:
    mode: str
    stopping: float  # time.monotonic() before pg_ctl stop
    stopped: float
    starting: float
    started: float
    recovered_s: dict[str, float | None] = field(default_factory=dict)  # per service, after `started`


def drill_services(with_ledger: bool) -> list[str]:
    """Every service: orders and the ledger take the traffic, the others must survive the same disasters
    (e-commerce follows every stock change the orders make; finance shares the ledger's identities)."""
    return [name for name in registry.service_names()
            if with_ledger or name not in ("ledger", "finance")]


@dataclass
class Traffic:
    """The writers and readiness probes running against the services until `stop` is set."""

    writers: list[Writer]
    stop: asyncio.Event
    tasks: list[asyncio.Task[TrafficLog]]
    probes: dict[str, asyncio.Task[ReadinessLog]]

    async def finish(self) -> tuple[list[TrafficLog], dict[str, ReadinessLog]]:
        self.stop.set()
        logs = list(await asyncio.gather(*self.tasks))
        return logs, {name: await task for name, task in self.probes.items()}


async def start_traffic(services: Services, names: list[str], database_url: str, admin_key: str,
                        config: DrillConfig) -> Traffic:
    timeout_s = config.client_timeout_s
    writers: list[Writer] = [OrderWriter(services["orders"].url, admin_key, config.catalog,
                                         concurrency=config.concurrency, timeout_s=timeout_s)]
    if "ledger" in names:
        from ledger.identity import load_identity

        finance_key = await create_key(database_url, "finance")
        signer = load_identity(Path(services.env["OMNISTOCK_DATA_DIR"]), "finance")
        writers.append(LedgerWriter(services["ledger"].url, finance_key, concurrency=max(1, config.concurrency // 4),
                                    timeout_s=timeout_s, seed=2, signer=signer))
    stop = asyncio.Event()
    return Traffic(writers, stop, [asyncio.create_task(writer.run(stop)) for writer in writers],
                   {name: asyncio.create_task(probe_readiness(services[name].url, stop, timeout_s=timeout_s))
                    for name in names})


async def run_drill(database_url: str, root: Path, admin_key: str, config: DrillConfig,
                    pg: EmbeddedPostgres | None = None) -> DrillReport:
    """Run the drill against `database_url`; PostgreSQL rounds only when given the cluster `pg`."""
    report = DrillReport("drill")
    names = drill_services(config.with_ledger)
    # With the cluster at hand each service logs in as its own role, as `omnistock up` does.
    roles = embedded_service_env(pg) if pg is not None else {}
    env = service_env(database_url, root / "data", admin_key,
                      OMNISTOCK_REQUEST_TIMEOUT_S=str(config.request_timeout_s), **roles)
    services = Services(env, root)
    try:
        if "ledger" in names:  # `omnistock ledger init`: each organisation's keys, before its service reads them
            from ledger.identity import init_identities

            init_identities(Path(env["OMNISTOCK_DATA_DIR"]))
        await services.start([name for name in names if name != "finance"])
        if "finance" in names:
            await services.start(["finance"])
        await seed_catalog(services["inventory"].url, admin_key, config.catalog)
        traffic = await start_traffic(services, names, database_url, admin_key, config)
        kills: list[float] = []
        pg_rounds: list[PgRound] = []
        began = time.monotonic()
        try:
            await asyncio.sleep(config.steady_s)
            for _ in range(config.kill_rounds):
                kills.append(await _kill9_round(services, names, config))
                await asyncio.sleep(config.steady_s)
            modes = itertools.cycle(config.pg_modes)
            for _ in range(config.pg_rounds if pg is not None else 0):
                assert pg is not None
                pg_rounds.append(await _pg_round(pg, services, names, traffic.writers[0], next(modes), config))
                await asyncio.sleep(config.steady_s)
            for _ in range(config.freeze_rounds if pg is not None else 0):
                assert pg is not None
                pg_rounds.append(await _pg_round(pg, services, names, traffic.writers[0], "freeze", config))
                await asyncio.sleep(config.steady_s)
        finally:
            logs, readiness = await traffic.finish()
        report.figures["services"] = ", ".join(names)
        report.figures["traffic s"] = round(time.monotonic() - began, 1)
        _analyse(report, services, logs, readiness, kills, pg_rounds, config)
        checked = time.monotonic()
        await _verify(report, services, admin_key, traffic.writers, logs, database_url, env)
        report.figures["verification s"] = round(time.monotonic() - checked, 1)
    finally:
        services.stop_all()
    return report


def _analyse(report: DrillReport, services: Services, logs: list[TrafficLog], readiness: dict[str, ReadinessLog],
             kills: list[float], pg_rounds: list[PgRound], config: DrillConfig) -> None:
    """What the traffic saw around each disaster: figures, and the promises it shows broken."""
    for what, log in zip(("orders", "ledger"), logs, strict=False):
        report.figures.update(_traffic_figures(what, log))
    report.problems += _timeouts_and_errors(logs, config.client_timeout_s)
    if kills:
        report.figures["kill -9 rounds"] = len(kills)
        report.problems += _kill_problems(logs, kills)
    for index, pg_round in enumerate(pg_rounds):
        report.figures.update(_pg_figures(index, pg_round, logs))
        report.problems += _pg_problems(index, pg_round, logs, readiness, config)
    # PostgreSQL rounds must be survived by the same processes: only kill -9 rounds start them again.
    report.problems += [f"{s.name} was started {s.starts} times, expected {1 + len(kills)}"
                        for s in services.services.values() if s.starts != 1 + len(kills)]


async def _kill9_round(services: Services, names: list[str], config: DrillConfig) -> float:
    killed = time.monotonic()
    services.kill9(names)
    await asyncio.sleep(config.kill_down_s)
    for name in names:
        services.spawn(name)
    await asyncio.gather(*(services.wait_ready(name) for name in names))
    return killed


async def _pg_round(pg: EmbeddedPostgres, services: Services, names: list[str], orders: Writer, mode: str,
                    config: DrillConfig) -> PgRound:
    stopping = time.monotonic()
    if mode == "freeze":
        frozen = _postgres_processes(pg)
        for process in frozen:
            process.suspend()
        stopped = time.monotonic()
        await asyncio.sleep(config.freeze_s)
        starting = time.monotonic()
        for process in frozen:
            process.resume()
    else:
        # pg_ctl blocks; in a thread so the traffic keeps flowing (and failing) meanwhile.
        await asyncio.to_thread(pg.stop, mode)
        stopped = time.monotonic()
        await asyncio.sleep(config.pg_down_s)
        starting = time.monotonic()
        await asyncio.to_thread(pg.start)
    found = PgRound(mode, stopping, stopped, starting, time.monotonic())
    # Recovered: /readyz is 200 again on every service and an order placed after the restart was
    # acknowledged, all without touching the service processes.
    deadline = found.started + config.recover_within_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if await _ready(services, name):
                found.recovered_s[name] = round(time.monotonic() - found.started, 2)
                pending.discard(name)
        await asyncio.sleep(0.05)
    await orders.acked_after(found.started, deadline)
    for name in pending:
        found.recovered_s[name] = None
    return found


def _postgres_processes(pg: EmbeddedPostgres) -> list[psutil.Process]:
    postmaster = psutil.Process(int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0]))
    return [postmaster, *postmaster.children()]


async def _ready(services: Services, name: str) -> bool:
    try:
        await services.wait_ready(name, timeout_s=0.5)
    except (TimeoutError, RuntimeError):
        return False
    return True


def _traffic_figures(what: str, log: TrafficLog) -> dict[str, Any]:
    return {
        f"{what} acknowledged": len(log.acks),
        f"{what} in doubt (sent, no answer)": len(log.in_doubt),
        f"{what} outcomes": dict(log.statuses()),
        f"{what} max latency s": round(log.max_latency_s(), 3),
    }


def _timeouts_and_errors(logs: list[TrafficLog], timeout_s: float) -> list[str]:
    problems = []
    for log in logs:
        if timeouts := log.timeouts():
            problems.append(f"{timeouts} requests outlived the client timeout of {timeout_s}s")
        if errors := [o for o in log.outcomes if o.status is not None and o.status >= 500 and o.status != 503]:
            problems.append(f"{len(errors)} answers were 5xx other than 503, e.g. {errors[:3]}")
    return problems


def _kill_problems(logs: list[TrafficLog], kills: list[float]) -> list[str]:
    problems = []
    for log in logs:
        if not any(o.status == 201 and o.started < kills[0] for o in log.outcomes):
            problems.append("kill -9: nothing was acknowledged before the first kill, so nothing was proven")
        for index, killed in enumerate(kills):
            until = kills[index + 1] if index + 1 < len(kills) else float("inf")
            if not any(o.status == 201 and killed < o.started < until for o in log.outcomes):
                problems.append(f"kill -9 round {index + 1}: nothing acknowledged after the restart")
    return problems


def _pg_figures(index: int, pg_round: PgRound, logs: list[TrafficLog]) -> dict[str, Any]:
    prefix = f"postgres restart {index + 1} ({pg_round.mode})"
    window = (pg_round.stopping, pg_round.started)
    return {
        f"{prefix} down s": round(pg_round.started - pg_round.stopping, 2),
        f"{prefix} recovered s after start": pg_round.recovered_s,
        f"{prefix} orders outcomes while down": dict(logs[0].statuses(*window)),
        f"{prefix} max request latency while down s": round(max(log.max_latency_s(*window) for log in logs), 3),
    }


def _pg_problems(index: int, pg_round: PgRound, logs: list[TrafficLog], readiness: dict[str, ReadinessLog],
                 config: DrillConfig) -> list[str]:
    prefix = f"postgres restart {index + 1} ({pg_round.mode})"
    problems = [f"{prefix}: {name} did not recover within {config.recover_within_s}s"
                for name, seconds in pg_round.recovered_s.items() if seconds is None]
    if not any(o.status == 201 and o.started > pg_round.started for o in logs[0].outcomes):
        problems.append(f"{prefix}: no order was acknowledged after the restart")
    bound = config.request_timeout_s + 1.0
    if pg_round.mode == "freeze" and (slowest := max(log.max_latency_s(pg_round.stopping, pg_round.started)
                                                     for log in logs)) > bound:
        problems.append(f"{prefix}: a request took {slowest:.1f}s while PostgreSQL was frozen, "
                        f"past the services' deadline of {config.request_timeout_s}s")
    for name, found in readiness.items():
        # Probes that began after the server was gone and finished before it was started again.
        down = [s for s in found.samples
                if s.started >= pg_round.stopped and s.started + s.latency_s <= pg_round.starting]
        if not down:
            problems.append(f"{prefix}: no /readyz probe of {name} fell inside the outage")
        if wrong := [s for s in down if s.status != 503]:
            problems.append(f"{prefix}: /readyz of {name} during the outage answered {wrong[:3]}, expected 503")
        if not any(s.status == 200 and s.started > pg_round.started for s in found.samples):
            problems.append(f"{prefix}: /readyz of {name} never answered 200 after the restart")
    return problems


async def _verify(report: DrillReport, services: Services, admin_key: str, writers: list[Writer],
                  logs: list[TrafficLog], database_url: str, env: dict[str, str]) -> None:
    """Once traffic has stopped: acknowledged writes, in-doubt retries, ledger audit, stock invariants."""
    jobs = [_verify_writes("orders", services["orders"].url, admin_key, "/v1/orders", logs[0], checks.order_exists)]
    if "ecommerce" in services.services:
        jobs.append(checks.check_projection(database_url))
    if len(logs) > 1:
        ledger = writers[1]
        jobs.append(_verify_writes("ledger", ledger.base_url, ledger.api_key, "/v1/ledger/entries", logs[1],
                                   checks.ledger_entry_exists))
        jobs.append(_audit_ledger(env))
    else:
        report.figures["ledger audit"] = "skipped: no ledger service"
    for problems, figures in await asyncio.gather(*jobs):
        report.problems += problems
        report.figures.update(figures)
    # Last, so that the orders the in-doubt retries placed are checked too.
    problems, figures = await checks.check_stock(database_url)
    report.problems += problems
    report.figures.update(figures)


async def _verify_writes(what: str, base_url: str, api_key: str, path: str, log: TrafficLog,
                         exists: checks.Exists) -> tuple[list[str], dict[str, Any]]:
    problems = await checks.check_acks(base_url, api_key, path, log.acks, exists)
    retried, statuses = await checks.replay_in_doubt(base_url, api_key, path, log.in_doubt)
    return problems + retried, {f"{what} in doubt, retried": statuses}


async def _audit_ledger(env: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    clean, summary = await asyncio.to_thread(checks.ledger_audit, env)
    figures = {"ledger audit": summary.splitlines()[-1] if summary else ""}
    return ([] if clean else [f"ledger audit failed: {summary[-3000:]}"]), figures
