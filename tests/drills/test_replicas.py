"""Two instances of every service against one database under the mixed load (benchmarks/drills/replicas.py;
`make drill` runs a longer one): whichever instance answers, no promise breaks.

Real processes (`omnistock serve NAME`, two per service, ports of their own) on a PostgreSQL of the
test's own; orders round robin with some keys sent to both instances at once, fulfils and cancels
through the other instance, unpaid orders expiring under two sweepers, two webhook subscriptions to a
local receiver that fails some first attempts, SSE readers on every inventory and e-commerce instance,
ledger appends through both ledger instances and reconciliation commits through both finance instances.
"""

from __future__ import annotations

from benchmarks.drills.replicas import ReplicaConfig, run_replicas
from benchmarks.drills.traffic import Catalog
from shared.embedded_db import EmbeddedPostgres
from tests.conftest import ADMIN_KEY
from tests.drills.test_drill import own_postgres  # noqa: F401 - the fixture: a cluster of the test's own

CONFIG = ReplicaConfig(instances=2, concurrency=6, ledger_concurrency=2, traffic_s=4.0, commit_every_s=1.0,
                       sse_switch_every=3, catalog=Catalog(locations=3, skus=6, stock=10_000, hot_stock=15))


async def test_two_instances_of_every_service_keep_every_promise(own_postgres: EmbeddedPostgres) -> None:  # noqa: F811
    report = await run_replicas(own_postgres.dsn, own_postgres.pgdata.parent, ADMIN_KEY, CONFIG, own_postgres)
    # Every broken promise is listed: an acknowledged order missing or a key naming two orders, an order
    # nobody acknowledged, a release twice, units sold beyond stock, levels off their movements, an
    # availability change published twice, a (subscription, event) enqueued twice, a delivery sent twice
    # without a failure or while another attempt of it or of its SKU's queue was in flight, an SSE reader
    # missing or repeating an event, a ledger seq gap or batches out of order, an unclean audit, a 5xx.
    assert report.problems == [], "\n".join(report.lines())
    figures = report.figures
    # The load reached what it was meant to exercise, or the promises above would hold vacuously.
    assert figures["keys sent to both instances at once (both answered)"] > 0
    assert figures["orders expired by the sweepers"] > 0
    assert figures["webhook retries (each after a 503 the receiver chose)"] > 0
    assert figures["finance runs committed through both instances"] > 0
    assert len(figures["placements per instance"]) == CONFIG.instances
    assert all(seen > 0 for seen in figures["SSE events seen per reader"].values())
    # The switching readers really moved between instances (resuming by Last-Event-ID each time).
    assert all(connections > 2 for connections in figures["SSE switching readers' connections"].values())
    assert figures["ledger audit"].startswith("OK"), figures["ledger audit"]
