"""`python -m benchmarks.drills` (`make drill`): the large drills, each on a fresh durable PostgreSQL.

drill: kill -9 rounds, then PostgreSQL restarts alternating fast and immediate stops, then freezes
(SIGSTOP). replicas: two instances of every service on one database under the mixed load
(benchmarks/drills/replicas.py). Prints each report, writes benchmarks/results/<scenario>-<UTC
timestamp>.json, exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from benchmarks.cpu import machine
from benchmarks.drills.checks import unhandled_errors
from benchmarks.drills.replicas import ReplicaConfig, run_replicas
from benchmarks.drills.report import DrillReport
from benchmarks.drills.run import DrillConfig, run_drill
from benchmarks.drills.traffic import Catalog
from benchmarks.report import RESULTS_DIR, git_commit
from services import registry
from shared.db import init_connection
from shared.embedded_db import EmbeddedPostgres, free_port
from shared.migrations import CORE_MIGRATIONS
from shared.roles import ROLE_OF, prepare_database


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drills", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-rounds", type=int, default=3)
    parser.add_argument("--pg-rounds", type=int, default=2, help="PostgreSQL restarts (fast, immediate, ...)")
    parser.add_argument("--freeze-rounds", type=int, default=1, help="SIGSTOP PostgreSQL for --freeze-s")
    parser.add_argument("--freeze-s", type=float, default=20.0)
    parser.add_argument("--steady-s", type=float, default=10.0, help="traffic before, between and after rounds")
    parser.add_argument("--pg-down-s", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--client-timeout-s", type=float, default=15.0)
    parser.add_argument("--replica-instances", type=int, default=2, help="replicas: instances of each service")
    parser.add_argument("--replica-s", type=float, default=30.0, help="replicas: seconds of traffic")
    parser.add_argument("--replica-concurrency", type=int, default=16, help="replicas: order clients")
    parser.add_argument("--scenarios", default="drill,replicas", help="comma-separated: drill, replicas")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (service logs, database)")
    return parser.parse_args(argv)


async def prepared_cluster(root: Path) -> EmbeddedPostgres:
    # Durable, as users run it: an immediate stop is a crash, and only durable commits survive one.
    pg = EmbeddedPostgres(root / "pg", free_port(), durable=True)
    pg.start()
    conn = await asyncpg.connect(pg.dsn)
    try:
        await init_connection(conn)
        await prepare_database(conn, [CORE_MIGRATIONS, *registry.all_migrations()],
                               logins={s: pg.role_dsn(r) for s, r in ROLE_OF.items()})
    finally:
        await conn.close()
    return pg


async def drill(args: argparse.Namespace, root: Path) -> DrillReport:
    pg = await prepared_cluster(root)
    try:
        config = DrillConfig(
            concurrency=args.concurrency, client_timeout_s=args.client_timeout_s, steady_s=args.steady_s,
            kill_rounds=args.kill_rounds, kill_down_s=1.0, pg_rounds=args.pg_rounds, pg_modes=("fast", "immediate"),
            pg_down_s=args.pg_down_s, freeze_rounds=args.freeze_rounds, freeze_s=args.freeze_s,
            catalog=Catalog(locations=10, skus=50, stock=100_000, hot_stock=50))
        return await run_drill(pg.dsn, root, "osk_drill_" + secrets.token_urlsafe(24), config, pg)
    finally:
        pg.stop(mode="immediate")


async def replicas(args: argparse.Namespace, root: Path) -> DrillReport:
    pg = await prepared_cluster(root)
    try:
        config = ReplicaConfig(instances=args.replica_instances, concurrency=args.replica_concurrency,
                               ledger_concurrency=4, traffic_s=args.replica_s, client_timeout_s=args.client_timeout_s,
                               commit_every_s=2.0, catalog=Catalog(locations=10, skus=50, stock=100_000, hot_stock=50))
        return await run_replicas(pg.dsn, root, "osk_drill_" + secrets.token_urlsafe(24), config, pg)
    finally:
        pg.stop(mode="immediate")


SCENARIOS = {"drill": drill, "replicas": replicas}


def run_scenario(name: str, args: argparse.Namespace, started_at: str) -> bool:
    root = Path(tempfile.mkdtemp(prefix=f"omnistock-{name}-"))
    began = time.perf_counter()
    try:
        report = asyncio.run(SCENARIOS[name](args, root))
        errors = unhandled_errors(root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n".join(report.lines()))
    for service, tracebacks in errors.items():
        print(f"  {service} logged {len(tracebacks)} unhandled error(s); the last:\n{tracebacks[-1]}")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{started_at}.json"
    path.write_text(json.dumps({
        "started_at": started_at, "duration_s": round(time.perf_counter() - began, 1), "args": vars(args),
        "machine": machine(), "git_commit": git_commit(), **asdict(report), "ok": report.ok,
        "unhandled_errors": errors,
    }, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return report.ok


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started_at = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    if unknown := [name for name in names if name not in SCENARIOS]:
        print(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}", file=sys.stderr)
        return 2
    results = [run_scenario(name, args, started_at) for name in names]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
