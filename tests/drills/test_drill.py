"""The small drill (benchmarks/drills/run.py; `make drill` runs the large one), in a few seconds.

Real processes of every service on a PostgreSQL of the test's own, because the drill stops it:
concurrent order placements and ledger appends; kill -9 of every service, restart;
then an immediate (crash-like) PostgreSQL stop and start under the same traffic, services untouched;
then PostgreSQL frozen (SIGSTOP) for a few seconds: every request still ends by its deadline.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from benchmarks.drills.run import DrillConfig, run_drill
from benchmarks.drills.traffic import Catalog
from services import registry
from shared.db import init_connection
from shared.embedded_db import EmbeddedPostgres, free_port
from shared.migrations import CORE_MIGRATIONS
from shared.roles import ROLE_OF, prepare_database
from tests.conftest import ADMIN_KEY


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    # Not under pytest's basetemp: another pytest session may prune it, and with the pid file gone
    # stop() would silently leave the server running. Durable: an immediate stop is a crash, and with
    # synchronous_commit off (the test clusters' setting) a crash loses commits that were already
    # acknowledged. The drill would rightly say so.
    root = Path(tempfile.mkdtemp(prefix="omnistock-drill-pg-"))
    server = EmbeddedPostgres(root / "pg", free_port(), durable=True)
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        try:
            await init_connection(conn)
            await prepare_database(conn, [CORE_MIGRATIONS, *registry.all_migrations()],
                                   logins={s: server.role_dsn(r) for s, r in ROLE_OF.items()})
        finally:
            await conn.close()
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


async def test_acknowledged_writes_survive_kill_9_and_a_postgres_restart(own_postgres: EmbeddedPostgres) -> None:
    config = DrillConfig(concurrency=8, steady_s=0.8, kill_rounds=1, kill_down_s=0.3, pg_rounds=1,
                         pg_modes=("immediate",), pg_down_s=0.5, client_timeout_s=15.0,
                         freeze_rounds=1, freeze_s=3.0, request_timeout_s=1.5,
                         catalog=Catalog(locations=3, skus=6, stock=10_000, hot_stock=15))
    # Service logs and the ledger's identities beside the cluster, out of reach of basetemp pruning too.
    report = await run_drill(own_postgres.dsn, own_postgres.pgdata.parent, ADMIN_KEY, config, own_postgres)
    # Every broken promise is listed: lost or changed orders, replays answering another order, levels
    # off their movements, reserved off the open allocations, oversell, a request past the client
    # timeout, a 500, /readyz not 503 during the outage or not 200 after, a service that needed a
    # restart to recover, an unclean ledger audit.
    assert report.problems == [], "\n".join(report.lines())
    assert report.figures["orders acknowledged"] > 0
    assert report.figures["postgres restart 1 (immediate) orders outcomes while down"].get("503", 0) > 0
    # Frozen (SIGSTOP: neither answering nor refusing), requests still end with a 503 at their deadline.
    assert report.figures["postgres restart 2 (freeze) orders outcomes while down"].get("503", 0) > 0
    assert report.figures["services"] == ", ".join(registry.service_names())  # kill -9 of every one
    assert report.figures["availability projection"].startswith("agrees with a from-scratch computation")
    if "ledger" in registry.service_names():
        assert report.figures["ledger audit"].startswith("OK"), report.figures["ledger audit"]
