"""Start-up shared by the CLI commands: find or start the database, run service apps, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

from aiohttp import web

from services import registry
from shared.db import create_pool
from shared.embedded_db import EmbeddedPostgres
from shared.http.runner import ServiceRunner
from shared.migrations import CORE_MIGRATIONS, apply_migrations
from shared.settings import Settings


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database_url: the configured one, or the embedded cluster under data_dir."""
    if settings.database_url:
        yield settings
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedPostgres(settings.data_dir / "pg", settings.embedded_pg_port)
    dsn = server.start()
    try:
        yield settings.model_copy(update={"database_url": dsn})
    finally:
        if server.started_here:
            server.stop()


async def migrate(settings: Settings) -> list[str]:
    pool = await create_pool(settings.database_url or "", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await apply_migrations(conn, [CORE_MIGRATIONS, *registry.all_migrations()])
    finally:
        await pool.close()


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
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
