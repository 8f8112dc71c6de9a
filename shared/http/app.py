"""The one app factory: every service is `create_service_app(...)` plus its routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import prometheus_client
from aiohttp import web

from shared.auth import KeyCache, cache_limits
from shared.db import close_pool, create_pool
from shared.errors import ServiceUnavailable
from shared.event_stream import EventHub
from shared.housekeeping import Job, core_jobs, housekeeping_context
from shared.http.api import Api, Call
from shared.http.connection_guard import guarded_request
from shared.http.deadline import within_deadline
from shared.http.key_routes import add_key_routes
from shared.http.keys import BUCKETS, HUB, KEY_CACHE, POOL, SERVICE, SETTINGS, STREAMS
from shared.http.middleware import observe
from shared.http.openapi import build_openapi
from shared.http.rate_limit import StreamSlots, TokenBuckets
from shared.migrations import CORE_MIGRATIONS, MigrationSet
from shared.roles import prepare_database, require_migrated, service_dsn
from shared.settings import Settings

READINESS_TIMEOUT_S = 2.0

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def add_system_routes(api: Api) -> None:
    """/healthz, /readyz, /metrics, /openapi.json: open to everyone, on every service."""
    if any(route.path == "/healthz" for route in api.routes):
        return

    @api.get("/healthz", public=True, name="healthz")
    async def healthz(call: Call[None, None]) -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "service": call.request.app[SERVICE]}

    @api.get("/readyz", public=True, name="readyz", extra_responses={503: "database unreachable"})
    async def readyz(call: Call[None, None]) -> dict[str, str]:
        """The database answers."""
        try:
            await within_deadline(call.pool.fetchval("SELECT 1"), READINESS_TIMEOUT_S, "the readiness probe")
        except Exception as exc:  # any failure to answer means "not ready", whatever its kind
            raise ServiceUnavailable(f"database not reachable: {type(exc).__name__}") from None
        return {"status": "ready", "service": call.request.app[SERVICE]}

    @api.get("/metrics", public=True, name="metrics", produces="text/plain")
    async def metrics(call: Call[None, None]) -> web.Response:
        """Prometheus metrics."""
        return web.Response(body=prometheus_client.generate_latest(), content_type="text/plain")

    @api.get("/openapi.json", public=True, name="openapi")
    async def openapi(call: Call[None, None]) -> dict[str, Any]:
        """This service's OpenAPI document."""
        return build_openapi(api)


def create_service_app(
    service: str,
    settings: Settings,
    api: Api,
    *,
    migrations: list[MigrationSet],
    event_hub: list[str] | None = None,
    express_family: str | None = None,
    contexts: list[CleanupContext] | None = None,
    housekeeping: list[Job] | None = None,
    session_state: bool = False,
) -> web.Application:
    """Wire a service: settings, pool, migrations, auth, an event hub reading the `event_hub` families
    (none: no hub; `express_family`: shared/event_stream.py, the express lane), then `contexts`; the
    housekeeping loop prunes the shared tables and the service's own
    `housekeeping` jobs. `session_state`: the service's code leaves session state on pooled connections
    (a session advisory lock), so every release resets the session (shared/db.py create_pool)."""
    dsn = service_dsn(settings, service)  # raises when there is no URL at all (the CLI starts the embedded database)
    add_system_routes(api)
    add_key_routes(api)
    # guarded_request first: the connection guard must know a request has arrived before anything else runs.
    app = web.Application(middlewares=[guarded_request, observe], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[BUCKETS] = TokenBuckets(settings.key_limits)
    app[STREAMS] = StreamSlots(settings.key_limits)
    api.mount(app)

    async def database(app: web.Application) -> AsyncIterator[None]:
        sets = [CORE_MIGRATIONS, *migrations]
        if settings.database_url:
            # The owner's URL is here (embedded, tests, a single-URL deployment): migrate and grant on a
            # connection of its own, which closes before the service starts working as its role.
            owner = await create_pool(settings.database_url, min_size=1, max_size=1,
                                      connect_timeout=settings.db_connect_timeout_s,
                                      application_name=f"omnistock-{service}-migrate")
            try:
                async with owner.acquire() as conn:
                    key = settings.bootstrap_admin_key
                    await prepare_database(conn, sets, bootstrap_admin_key=key.get_secret_value() if key else None)
            finally:
                await owner.close()
        pool = await create_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout_s,
            connect_timeout=settings.db_connect_timeout_s,
            application_name=f"omnistock-{service}",
            session_state=session_state,
        )
        if not settings.database_url:
            try:
                async with pool.acquire() as conn:
                    await require_migrated(conn, sets)
            except BaseException:
                await pool.close()
                raise
        app[POOL] = pool
        key_cache = KeyCache(pool, dsn, cache_limits(settings), name=f"omnistock-{service}")
        await key_cache.start()
        app[KEY_CACHE] = key_cache
        yield
        await key_cache.stop()
        await close_pool(pool)

    async def hub(app: web.Application) -> AsyncIterator[None]:
        event_hub_ = EventHub(app[POOL], dsn, poll_interval_s=settings.event_poll_interval_s,
                              families=event_hub, express_family=express_family)
        await event_hub_.start()
        app[HUB] = event_hub_
        yield
        await event_hub_.stop()

    app.cleanup_ctx.append(database)
    if event_hub is not None:
        app.cleanup_ctx.append(hub)
    app.cleanup_ctx.extend(contexts or [])
    app.cleanup_ctx.append(housekeeping_context([*core_jobs(settings), *(housekeeping or [])], settings))
    return app
