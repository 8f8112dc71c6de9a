"""Wiring of the console: the shared app factory (pool, migrations, system routes), then templates,
static files, the page middleware, the upstream client and the session sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from services.console import repository as repo
from services.console.api import api
from services.console.pages import audit, auth, finance, ops, reference, store, store_live
from services.console.upstream import Upstream
from services.console.web import UPSTREAM, console_pages, end_session, when, who
from shared.http.app import create_service_app
from shared.http.keys import POOL
from shared.logging import get_logger
from shared.migrations import MigrationSet
from shared.settings import Settings

HERE = Path(__file__).parent
MIGRATIONS = [MigrationSet("console", HERE / "migrations")]
PAGE_MODULES = [auth, reference, store, store_live, ops, finance, audit]
SWEEP_EVERY_S = 30.0
KEEP_ENDED_S = 30 * 86_400.0  # ended sessions stay a month: who was signed in when
log = get_logger("omnistock.console")


def create_app(settings: Settings) -> web.Application:
    app = create_service_app("console", settings, api, migrations=MIGRATIONS,
                             contexts=[_upstream_context(settings), _sweeper(settings)])
    app.middlewares.append(console_pages)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                         filters={"who": who, "when": when})
    for module in PAGE_MODULES:
        app.router.add_routes(module.routes)
    app.router.add_static("/static/", HERE / "static", append_version=False)
    return app


def _upstream_context(settings: Settings):  # type: ignore[no-untyped-def]
    async def context(app: web.Application) -> AsyncIterator[None]:
        client = Upstream(settings)
        await client.start()
        app[UPSTREAM] = client
        yield
        await client.close()

    return context


def _sweeper(settings: Settings):  # type: ignore[no-untyped-def]
    """Ends sessions past their idle or absolute lifetime (revoking their keys) even if nobody comes back."""

    async def sweep_once(app: web.Application) -> None:
        pool = app[POOL]
        for row in await repo.sessions_past(pool, settings.console_session_idle_s, 500):
            await end_session(pool, row["token_hash"], row["reason"])
        await repo.delete_ended_sessions(pool, KEEP_ENDED_S, 5_000)
        await repo.forget_failures(pool, settings.console_sign_in_window_s * 2, 5_000)

    async def loop(app: web.Application) -> None:
        while True:
            try:
                await sweep_once(app)
            except Exception as exc:  # the database may be away; the next pass tries again
                log.warning("session sweep failed", error=type(exc).__name__)
            await asyncio.sleep(SWEEP_EVERY_S)

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(app), name="console-session-sweeper")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context

