"""Start-up shared by the CLI commands: find or start the database, run service apps, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator

from aiohttp import web

from services import registry
from shared.db import create_pool
from shared.embedded_db import EmbeddedPostgres
from shared.http.runner import ServiceRunner
from shared.migrations import CORE_MIGRATIONS
from shared.roles import ROLE_OF, configured_logins, prepare_database
from shared.settings import Settings


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Settings with database URLs: the configured ones, or the embedded cluster's under data_dir (the
    owner's and one per service role, passwords from the cluster's secrets file)."""
    if settings.database_url or configured_logins(settings):
        yield settings
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(settings.data_dir / "pg", settings.embedded_pg_port)
    dsn = server.start()
    try:
        yield settings.model_copy(update={"database_url": dsn, **embedded_service_urls(server)})
    finally:
        if server.started_here:
            server.stop()


def embedded_service_urls(server: EmbeddedPostgres, database: str = "postgres") -> dict[str, str]:
    """Settings fields: each service's role URL on the embedded cluster."""
    return {f"{service}_database_url": server.role_dsn(role, database) for service, role in ROLE_OF.items()}


def embedded_service_env(server: EmbeddedPostgres, database: str = "postgres") -> dict[str, str]:
    """The same, as the environment of an `omnistock` process (benchmarks and drills start them)."""
    return {f"OMNISTOCK_{field.upper()}": url for field, url in embedded_service_urls(server, database).items()}


async def migrate(settings: Settings, *, force_grants: bool = False) -> list[str]:
    """As the owner: give each configured service URL its login, apply pending migrations, grant, and
    store the bootstrap admin key. Without the owner's URL (a container holding only its role's URL)
    there is nothing it may do: the service checks the schema at start-up instead."""
    if not settings.database_url:
        return []
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    key = settings.bootstrap_admin_key
    try:
        async with pool.acquire() as conn:
            return await prepare_database(conn, [CORE_MIGRATIONS, *registry.all_migrations()],
                                          logins=configured_logins(settings), force_grants=force_grants,
                                          bootstrap_admin_key=key.get_secret_value() if key else None)
    finally:
        await pool.close()


# Python's cycle collector, at its defaults (700, 10, 10), took 11.6 % of the e-commerce process's CPU
# under the order load (py-spy --native): a collection every 700 new container objects, while each
# batch of stock changes allocates thousands (records, events, deliveries) and the event hub's window
# keeps tens of thousands alive for the older generations to walk again and again. Almost nothing a
# request allocates is cyclic; reference counting frees it. Collections stay, a hundred times rarer.
GC_THRESHOLDS = (70_000, 20, 100)


def tune_gc() -> None:
    """Once the apps are set up: what start-up allocated lives for the process (frozen: never scanned
    again), and the collector runs at GC_THRESHOLDS."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: Settings, names: list[str], ready: asyncio.Event | None = None) -> None:
    """Run the named services until SIGINT/SIGTERM, then close every app's resources."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    try:
        for name in names:
            runner = ServiceRunner(registry.load(name).create_app(settings))  # header limits, connection guard
            await runner.setup()
            await web.TCPSite(runner, settings.host, settings.port_for(name), backlog=4096).start()
            runners.append(runner)
        tune_gc()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
