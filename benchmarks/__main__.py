"""`python -m benchmarks [--quick] [--scenario NAME ...]`: fresh stack, limits, scenarios, report."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from datetime import UTC, datetime

from rich.console import Console

from benchmarks import limits as limits_mod
from benchmarks import profile, report
from benchmarks.cpu import CpuMeter, machine
from benchmarks.limits import Limit
from benchmarks.profile import Profiler
from benchmarks.scenarios import SCENARIOS, Context, Record, Scenario, correctness
from benchmarks.stack import Stack

# Wide enough that the table's rows stay on one line when the output goes to a file or CI log.
console = Console(width=None if sys.stdout.isatty() else 160)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data and short loads (< 2 minutes)")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        choices=[s.name for s in SCENARIOS], help="run only these (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temp dir (logs, database)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the services with py-spy and PostgreSQL with pg_stat_statements"
                             " during every load (results/profiles/)")
    parser.add_argument("--native", action="store_true",
                        help="with --profile: sample native frames too (C extensions, the collector, syscalls);"
                             " it pauses each service to unwind, so the run's figures are not comparable")
    return parser.parse_args(argv)


def measure_limits(stack: Stack, quick: bool) -> list[Limit]:
    assert stack.pg is not None
    asyncio.run(limits_mod.create_scratch_table(stack.dsn))
    seconds = 2.0 if quick else 10.0  # quick: enough for a stable tps on this box, leaves time for scenarios
    found = limits_mod.pgbench_limits(stack.pg.dsn, [8, 32], seconds)
    return [*found, limits_mod.sha256_limit(0.5 if quick else 3.0)]


def run_scenarios(ctx: Context, scenarios: list[Scenario]) -> tuple[list[Record], list[str]]:
    records: list[Record] = []
    failures: list[str] = []
    for scenario in scenarios:
        console.print(f"[bold]scenario[/bold] {scenario.name}")
        started = time.perf_counter()
        try:
            ctx.stack.start_services(list(scenario.services))
            found = scenario.run(ctx)
        except Exception:  # one broken scenario must not hide the figures of the others
            failures.append(scenario.name)
            console.print(f"[red]{scenario.name} failed[/red]\n{traceback.format_exc()}")
            continue
        for record in found:
            if wrong := correctness.broken(record.extra.get("correctness", {})):
                failures.append(f"{scenario.name}: {', '.join(wrong)}")
                console.print(f"[red]{record.scenario}: {', '.join(wrong)}[/red]")
            latency = "" if record.p50_ms is None else f", p50 {record.p50_ms:.2f} ms, p99 {record.p99_ms or 0:.2f} ms"
            console.print(f"  {record.scenario}: {record.throughput:,.0f} {record.unit}{latency}")
        records.extend(found)
        ctx.setup[f"{scenario.name} (total)"] = round(time.perf_counter() - started, 1)
    return records, failures


def _profiler(wanted: bool, started_at: str, dsn: str, native: bool = False) -> Profiler | None:
    if not wanted:
        return None
    if not profile.available():
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return Profiler(report.RESULTS_DIR / "profiles" / started_at, dsn, native=native)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    scenarios = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    began = time.perf_counter()
    stack = Stack(keep=args.keep)
    setup: dict[str, float] = {}
    try:
        with console.status("starting PostgreSQL (durable)"):
            t = time.perf_counter()
            stack.start_database(statement_stats=args.profile)
            stack.omnistock("migrate")
            setup["postgres + migrations"] = round(time.perf_counter() - t, 1)
        with console.status("measuring limits: pgbench, sha256"):
            t = time.perf_counter()
            limits = measure_limits(stack, args.quick)
            setup["limits"] = round(time.perf_counter() - t, 1)
        meter = CpuMeter({
            "postgres": lambda: [stack.postmaster_pid()],
            **{name: (lambda name=name: [stack.services[name].process.pid] if name in stack.services else [])
               for name in sorted({n for s in scenarios for n in s.services})},
        })
        ctx = Context(stack=stack, quick=args.quick, limits=limits, meter=meter, setup=setup,
                      profiler=_profiler(args.profile, started_at, stack.dsn, args.native))
        records, failures = run_scenarios(ctx, scenarios)
    finally:
        stack.close()
    if args.keep:
        console.print(f"kept {stack.root}")
    run = {"started_at": started_at, "quick": args.quick, "duration_s": round(time.perf_counter() - began, 1),
           "machine": machine(), "git_commit": report.git_commit(), "setup": setup, "failures": failures}
    report.print_table(console, records, limits, run)
    if ctx.profiles:
        report.print_profiles(console, ctx.profiles)
    data = report.payload(records, limits, run, ctx.load_points, ctx.profiles)
    json_path = report.write_json(data)
    console.print(f"wrote {json_path}")
    if not args.quick and not args.scenario and not failures:  # RESULTS.md and the README quote complete runs
        plots = report.render_plots(ctx.load_points, report.RESULTS_DIR)
        console.print(f"wrote {report.write_markdown(data, records, limits, json_path, plots)}")
        console.print(f"wrote the Performance table of {report.update_readme(data, records, plots)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
