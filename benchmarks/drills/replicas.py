"""The replicas drill: two instances of every service on one database, under the mixed order load.

    start N instances of each service (own ports, one database, one data dir) -> seed -> subscribe two
    webhooks -> SSE readers on every inventory and e-commerce instance -> traffic round robin across
    the instances: orders (some sent to both instances with one key), fulfils and cancels through the
    other instance, unpaid orders left to expire (short TTL: every sweeper competes), ledger appends,
    reconciliation commits through every finance instance at once -> stop -> let the background work
    finish -> check (benchmarks/drills/replica_checks.py)

What it proves is that the services keep no state of their own that matters: whichever instance
answers, every acknowledged order exists once, nothing is oversold, each expired order is released
once, the projection and the webhook fan-out are worked by one consumer at a time, dispatchers never
send one delivery or one SKU's queue twice at once, the ledger's appends form one order, and every
SSE reader sees every change in order whichever instance it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks.drills import checks
from benchmarks.drills import replica_checks as rc
from benchmarks.drills.processes import Services, service_env
from benchmarks.drills.replica_traffic import (
    CommitLog,
    FinanceCommits,
    LifecycleLog,
    OrderLifecycle,
    SseReader,
    WebhookReceiver,
)
from benchmarks.drills.report import DrillReport, create_key
from benchmarks.drills.traffic import Catalog, LedgerWriter, TrafficLog, seed_catalog
from ledger.identity import init_identities, load_identity
from services import registry
from services.ecommerce.domain import AVAILABILITY_TOPICS
from services.runtime import embedded_service_env
from shared.db import init_connection
from shared.embedded_db import EmbeddedPostgres
from shared.migrations import CORE_MIGRATIONS
from shared.roles import ROLE_OF, prepare_database

WEBHOOK_SECRET = "replica-drill-" + uuid.uuid4().hex
# Events a stream delivers, by reader family: the outbox family and the route, per service.
STREAMS = {"stock": ("inventory", "/v1/events"), "availability": ("ecommerce", "/v1/availability/stream")}


@dataclass(frozen=True)
class ReplicaConfig:
    instances: int = 2
    concurrency: int = 8  # order clients
    ledger_concurrency: int = 2
    traffic_s: float = 5.0
    client_timeout_s: float = 15.0
    # Unpaid orders expire after this, and every orders instance sweeps this often: they compete.
    reservation_ttl_s: int = 1
    sweep_interval_s: float = 0.2
    commit_every_s: float = 1.0
    webhook_fail_every: int = 5
    sse_switch_every: int = 7  # the switching readers hang up after this many events and resume elsewhere
    settle_s: float = 60.0  # how long the background work may take to finish after the traffic
    catalog: Catalog = field(default_factory=lambda: Catalog(locations=3, skus=6, stock=10_000, hot_stock=15))


def instance_names(config: ReplicaConfig) -> dict[str, list[str]]:
    return {name: [f"{name}-{i + 1}" for i in range(config.instances)] for name in registry.service_names()}


def replica_env(database_url: str, root: Path, admin_key: str, config: ReplicaConfig,
                pg: EmbeddedPostgres | None) -> dict[str, str]:
    """The instances' environment. On a cluster of its own each instance holds only its role's URL, as a
    container does (docker-compose.yml): `migrate_once` did the owner's work, so instances only check the
    schema at start-up instead of queueing on the migration lock one after another."""
    env = service_env(
        database_url, root / "data", admin_key, **(embedded_service_env(pg) if pg is not None else {}),
        OMNISTOCK_RESERVATION_TTL_S=str(config.reservation_ttl_s),
        OMNISTOCK_RESERVATION_SWEEP_INTERVAL_S=str(config.sweep_interval_s),
        OMNISTOCK_WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]',
        OMNISTOCK_WEBHOOK_BACKOFF_BASE_S="0.05", OMNISTOCK_WEBHOOK_BACKOFF_MAX_S="0.2",
        OMNISTOCK_WEBHOOK_POLL_INTERVAL_S="0.2", OMNISTOCK_PROJECTION_POLL_INTERVAL_S="0.2",
        # Checkpoints cut inside appends and by every ledger instance's timer, all under the appenders' lock.
        OMNISTOCK_LEDGER_CHECKPOINT_EVERY="25", OMNISTOCK_LEDGER_CHECKPOINT_INTERVAL_S="0.5",
        OMNISTOCK_LOG_LEVEL="info")  # the sweepers' "reservations expired" lines tell which instance swept
    if pg is not None:
        del env["DATABASE_URL"], env["OMNISTOCK_BOOTSTRAP_ADMIN_KEY"]
    return env


async def migrate_once(conn: asyncpg.Connection, admin_key: str, pg: EmbeddedPostgres) -> None:
    """What docker-compose's one-shot `migrate` container does, as the owner: logins, migrations, grants,
    the bootstrap admin key."""
    await prepare_database(conn, [CORE_MIGRATIONS, *registry.all_migrations()], bootstrap_admin_key=admin_key,
                           logins={s: pg.role_dsn(r) for s, r in ROLE_OF.items()})


@dataclass
class Drill:
    """One run's moving parts, handed from step to step."""

    report: DrillReport
    config: ReplicaConfig
    conn: asyncpg.Connection  # the owner's: seeding keys, waiting for the background work, checks
    database_url: str
    owner_env: dict[str, str]  # for `omnistock ledger audit`
    urls: dict[str, list[str]]  # service -> its instances' base URLs
    admin_key: str
    receiver: WebhookReceiver
    readers: dict[str, SseReader] = field(default_factory=dict)
    start_id: int = 0  # the event every SSE reader resumes after
    finance_key: str = ""
    finance_signer: Any = None  # ledger.identity.Identity of finance: the ledger writer signs with it


async def run_replicas(database_url: str, root: Path, admin_key: str, config: ReplicaConfig,
                       pg: EmbeddedPostgres | None = None) -> DrillReport:
    env = replica_env(database_url, root, admin_key, config, pg)
    services = Services(env, root)
    names = instance_names(config)
    for name, instances in names.items():
        for instance in instances:
            services.add(instance, serves=name)
    conn = await asyncpg.connect(database_url)
    await init_connection(conn)  # jsonb as Python objects
    drill = Drill(DrillReport("replicas"), config, conn, database_url, dict(env, DATABASE_URL=database_url),
                  {name: [services[i].url for i in instances] for name, instances in names.items()}, admin_key,
                  WebhookReceiver(WEBHOOK_SECRET, fail_every=config.webhook_fail_every))
    try:
        if pg is not None:
            await migrate_once(conn, admin_key, pg)
        await _start(drill, services, names)
        logs = await _traffic(drill)
        await _checks(drill, *logs)
    finally:
        await conn.close()
        await drill.receiver.stop()
        services.stop_all()
    drill.report.problems += logged_errors(root)
    drill.report.figures["orders expired per sweeping instance"] = swept(root, names["orders"])
    return drill.report


def _log_entries(log: Path) -> list[dict[str, Any]]:
    entries = []
    for line in log.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            if isinstance(entry := orjson.loads(line), dict):
                entries.append(entry)
    return entries


def swept(log_dir: Path, instances: list[str]) -> dict[str, int]:
    """Orders each orders instance's sweeper expired, from its log: both compete for the same orders."""
    return {name: sum(int(e.get("orders", 0)) for e in _log_entries(log_dir / f"{name}.log")
                      if e.get("event") == "reservations expired") for name in instances}


async def _start(drill: Drill, services: Services, names: dict[str, list[str]]) -> None:
    """Every instance, the catalogue, the webhook receiver and its subscriptions, the SSE readers."""
    began = time.monotonic()
    # `omnistock ledger init` first: each organisation's keys, before its services read them.
    data_dir = Path(services.env["OMNISTOCK_DATA_DIR"])
    init_identities(data_dir)
    drill.finance_signer = load_identity(data_dir, "finance")
    # Finance after the ledger instances, as an operator starts them.
    # Ten interpreters importing the services at once on a small machine: give them time.
    await services.start([i for name, instances in names.items() if name != "finance" for i in instances],
                         timeout_s=180)
    await services.start(names["finance"], timeout_s=180)
    drill.report.figures["instances"] = {name: len(instances) for name, instances in names.items()}
    drill.report.figures["instances ready s"] = round(time.monotonic() - began, 1)
    await seed_catalog(drill.urls["inventory"][0], drill.admin_key, drill.config.catalog)
    await drill.receiver.start()
    drill.receiver.instances = {i: services[i].pid or 0 for i in names["ecommerce"]}
    await _settle(drill.conn, drill.config.settle_s)  # the seed's events fanned out before anyone subscribes
    await _subscribe(drill.urls["ecommerce"], drill.admin_key, drill.receiver)
    drill.start_id = start_id = await drill.conn.fetchval(
        "SELECT id FROM core.events ORDER BY txid DESC, id DESC LIMIT 1")
    drill.readers = {f"{family}@{i + 1}": SseReader([f"{url}{path}"], drill.admin_key, start_id)
                     for family, (service, path) in STREAMS.items() for i, url in enumerate(drill.urls[service])}
    # And one per stream that moves to the other instance every few events, resuming by Last-Event-ID.
    drill.readers.update({
        f"{family}@switching": SseReader([f"{url}{path}" for url in drill.urls[service]], drill.admin_key,
                                         start_id, switch_every=drill.config.sse_switch_every)
        for family, (service, path) in STREAMS.items()})
    drill.finance_key = await create_key(drill.database_url, "finance")


async def _traffic(drill: Drill) -> tuple[LifecycleLog, TrafficLog, CommitLog, dict[str, list[int]]]:
    """The clients for `traffic_s`, then the background work until it is done; what the readers must
    have seen."""
    config, urls, figures = drill.config, drill.urls, drill.report.figures
    stop, stop_readers = asyncio.Event(), asyncio.Event()
    reading = [asyncio.create_task(reader.run(stop_readers)) for reader in drill.readers.values()]
    orders = OrderLifecycle(urls["orders"], drill.admin_key, config.catalog, concurrency=config.concurrency,
                            timeout_s=config.client_timeout_s)
    ledger = LedgerWriter(urls["ledger"][0], drill.finance_key, concurrency=config.ledger_concurrency,
                          timeout_s=config.client_timeout_s, seed=3, replicas=tuple(urls["ledger"][1:]),
                          signer=drill.finance_signer)
    commits = FinanceCommits(urls["finance"], drill.finance_key, every_s=config.commit_every_s,
                             timeout_s=config.client_timeout_s)
    began = time.monotonic()
    tasks = [asyncio.create_task(orders.run(stop)), asyncio.create_task(ledger.run(stop)),
             asyncio.create_task(commits.run(stop))]
    await asyncio.sleep(config.traffic_s)
    stop.set()
    order_log, ledger_log, commit_log = await asyncio.gather(*tasks)
    seconds = time.monotonic() - began
    figures["traffic s"] = round(seconds, 1)
    figures["orders placed per s (all instances)"] = round(len(order_log.orders.acks) / seconds, 1)
    figures["ledger appends acknowledged"] = len(ledger_log.acks)
    for what, log in (("order placement", order_log.orders), ("ledger append", ledger_log)):
        latencies = sorted(o.latency_s for o in log.outcomes if o.status is not None)
        if latencies:
            figures[f"{what} p50 / max s"] = (round(latencies[len(latencies) // 2], 3), round(latencies[-1], 3))
    drill.report.problems += _errors("orders", order_log.orders) + _errors("ledger", ledger_log)
    drill.report.problems += [f"order action answered {what}" for what in order_log.actions
                              if what.split()[-1].startswith("5") or "Error" in what]
    order_log.retried = await _retry_in_doubt(urls["orders"], drill.admin_key, order_log.orders)
    settled = time.monotonic()
    if any(left := await _settle(drill.conn, config.settle_s)):
        drill.report.problems.append(f"background work unfinished {config.settle_s:.0f}s after the traffic: {left}")
    expected = {family: await _stream_ids(drill.conn, family, drill.start_id) for family in STREAMS}
    await _await_readers(drill.readers, expected, config.settle_s)
    stop_readers.set()
    await asyncio.gather(*reading)
    figures["background work settled in s"] = round(time.monotonic() - settled, 1)
    return order_log, ledger_log, commit_log, expected


async def _checks(drill: Drill, order_log: LifecycleLog, ledger_log: TrafficLog, commit_log: CommitLog,
                  expected: dict[str, list[int]]) -> None:
    conn, report = drill.conn, drill.report
    checked = time.monotonic()
    audit = asyncio.create_task(asyncio.to_thread(checks.ledger_audit, drill.owner_env))  # a process of its own
    found = {str(r["id"]) for r in await conn.fetch("SELECT id FROM orders.orders")}
    events = await conn.fetch("SELECT id, txid, payload FROM core.events WHERE topic LIKE 'availability.%'"
                              " ORDER BY txid, id")
    stock = await checks.stock_findings(conn)
    report.problems += [f"{checks.PROBLEM[k]}: {dict(r)}" for k in ("levels_off_movements", "reserved_off_open_orders")
                        for r in stock[k]]
    for problems, figures in [rc.orders_once(found, order_log), await rc.released_once(conn),
                              rc.availability_chain(events), await rc.webhooks_once(conn, drill.receiver),
                              rc.sse_in_order(drill.readers, expected),
                              await rc.ledger_in_one_order(conn, commit_log),
                              await checks.check_projection(drill.database_url, catch_up_s=drill.config.settle_s),
                              await _replays(drill, order_log.orders, ledger_log)]:
        report.problems += problems
        report.figures.update(figures)
    clean, summary = await audit
    report.figures["ledger audit"] = summary.splitlines()[-1] if summary else ""
    if not clean:
        report.problems.append(f"ledger audit failed: {summary[-3000:]}")
    report.figures["checks s"] = round(time.monotonic() - checked, 1)


def logged_errors(log_dir: Path, per_instance: int = 3) -> list[str]:
    """Errors the instances logged (a failed sweep, fan-out or projection batch, a deadlock between two
    instances, a 500): nothing in this drill should cause one."""
    problems = []
    for log in sorted(log_dir.glob("*.log")):
        problems += [f"{log.stem} logged {e.get('event')!r}: {str(e.get('exception', ''))[-600:]}"
                     for e in _log_entries(log) if e.get("level") in ("error", "critical")][:per_instance]
    return problems


def _errors(what: str, log: TrafficLog) -> list[str]:
    problems = []
    if timeouts := log.timeouts():
        problems.append(f"{what}: {timeouts} requests outlived the client timeout")
    if errors := [o for o in log.outcomes if o.status is not None and o.status >= 500]:
        problems.append(f"{what}: {len(errors)} answers were 5xx, e.g. {errors[:3]}")
    return problems


async def _subscribe(ecommerce: list[str], admin_key: str, receiver: WebhookReceiver) -> None:
    """One subscription through each instance: every topic, and only the snapshots and sell-outs."""
    topic_sets = [list(AVAILABILITY_TOPICS), ["availability.changed", "availability.out_of_stock"]]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        for index, (url, topics) in enumerate(zip(ecommerce, topic_sets * len(ecommerce), strict=False)):
            body = {"url": receiver.url(f"shop-{index + 1}"), "events": topics, "secret": WEBHOOK_SECRET}
            async with session.post(f"{url}/v1/webhooks", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"subscribing through {url}: {response.status} {await response.text()}")


async def _retry_in_doubt(orders: list[str], admin_key: str, log: TrafficLog) -> dict[str, str]:
    """Placements that got no answer, retried through the other instance: the order each key names."""
    found: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for index, (key, body) in enumerate(log.in_doubt):
            url = orders[(index + 1) % len(orders)]
            async with session.post(f"{url}/v1/orders", data=body, headers={"Idempotency-Key": key}) as response:
                payload = await response.json(content_type=None)
                if response.status in (200, 201):
                    found[key] = str(payload["id"])
    return found


async def _replays(drill: Drill, orders: TrafficLog, ledger: TrafficLog) -> rc.Findings:
    """Every acknowledged write replayed with its key, the instances taking turns (placements went round
    robin too, so about half replay on the instance that did not answer first): the same answer."""
    problems: list[str] = []
    for what, key, path, log, exists in (
            ("orders", drill.admin_key, "/v1/orders", orders, checks.order_exists),
            ("ledger", drill.finance_key, "/v1/ledger/entries", ledger, checks.ledger_entry_exists)):
        instances = drill.urls[what]
        for turn, url in enumerate(instances):
            share = log.acks[(turn + 1) % len(instances)::len(instances)]
            problems += await checks.check_acks(url, key, path, share, exists)
    return problems[:40], {"acknowledged writes replayed": len(orders.acks) + len(ledger.acks)}


SETTLED = """
SELECT (SELECT count(*) FROM orders.orders WHERE status = 'placed') AS unpaid,
       (SELECT count(*) FROM ecommerce.webhook_deliveries WHERE status IN ('pending', 'sending')) AS unsent,
       (SELECT count(*) FROM core.events e, ecommerce.cursors c
        WHERE c.name = ANY($1::text[]) AND (e.txid, e.id) > (c.txid, c.event_id)
          AND split_part(e.topic, '.', 1) = ANY(CASE c.name WHEN 'webhooks' THEN '{availability}'::text[]
                                                ELSE '{stock,location,channel}'::text[] END)) AS behind
"""


async def _settle(conn: asyncpg.Connection, within_s: float) -> dict[str, int]:
    """Wait until no order is left unpaid (the sweepers expired them), the projection and the webhook
    fan-out have read every event, and every delivery was sent."""
    deadline = time.monotonic() + within_s
    while True:
        row = dict(await conn.fetchrow(SETTLED, ["availability", "webhooks"]))
        if not any(row.values()) or time.monotonic() > deadline:
            return {k: v for k, v in row.items() if v}
        await asyncio.sleep(0.2)


async def _stream_ids(conn: asyncpg.Connection, family: str, after_id: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT e.id FROM core.events e, core.events s WHERE s.id = $2 AND (e.txid, e.id) > (s.txid, s.id)"
        " AND split_part(e.topic, '.', 1) = $1 ORDER BY e.txid, e.id", family, after_id)
    return [r["id"] for r in rows]


async def _await_readers(readers: dict[str, SseReader], expected: dict[str, list[int]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if all(len(r.ids) >= len(expected[name.split("@")[0]]) for name, r in readers.items()):
            return
        await asyncio.sleep(0.1)

