"""Wiring of the e-commerce service: routes, migrations, and its background tasks (projector, webhooks,
sync metrics) in every process."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

import services.orders.app
from services.ecommerce import projection, retention, webhooks
from services.ecommerce.background import background
from services.ecommerce.dispatcher import Dispatcher
from services.ecommerce.projection import run_projector
from services.ecommerce.routes import SHOP_PLACEMENT, STREAM_FAMILIES, api
from services.ecommerce.sync_metrics import run_sampler
from services.orders.repository import LocationDirectory
from services.orders.sourcing import POLICIES
from services.orders.use_cases import Placement
from shared.db import create_pool
from shared.http.app import create_service_app
from shared.http.keys import HUB, POOL
from shared.leadership import Leadership
from shared.migrations import MigrationSet
from shared.roles import service_dsn
from shared.settings import Settings

# Orders' sets include inventory's: shop orders are placed through the orders domain, in our transaction.
MIGRATIONS = [*services.orders.app.MIGRATIONS, MigrationSet("ecommerce", Path(__file__).parent / "migrations")]


async def _project(app: web.Application, settings: Settings) -> None:
    """The projector on a pool of its own: a rebuild or a batch of location changes touches every level
    of those locations (millions in a large chain), far past the per-statement budget of requests."""
    pool = await create_pool(service_dsn(settings, "ecommerce"), min_size=1, max_size=2,
                             command_timeout=settings.projection_command_timeout_s,
                             connect_timeout=settings.db_connect_timeout_s,
                             application_name="omnistock-ecommerce-projector", session_state=False)
    try:
        await run_projector(pool, app[HUB], settings.projection_poll_interval_s,
                            _lead(settings, projection.LEADERSHIP_KEY, "projector"))
    finally:
        pool.terminate()  # stopping: whatever batch was open rolls back, the cursor with it


def _lead(settings: Settings, key: int, job: str) -> Leadership:
    return Leadership(service_dsn(settings, "ecommerce"), key, application_name=f"omnistock-ecommerce-{job}-lead",
                      connect_timeout_s=settings.db_connect_timeout_s)


# What this process's readers follow: the projector, the webhook fan-out and the availability stream.
HUB_FAMILIES = sorted({*projection.FAMILIES, *webhooks.FAMILIES, *STREAM_FAMILIES})


def create_app(settings: Settings) -> web.Application:
    # Every replica runs both tasks; one replica at a time projects and fans out (leadership; the cursors'
    # versions refuse a stale batch), and SKIP LOCKED claims let every replica's dispatcher send disjoint
    # deliveries.
    projector = background("ecommerce-projector", lambda app: _project(app, settings))
    dispatcher = background("ecommerce-webhooks", lambda app: Dispatcher(
        app[POOL], app[HUB], settings, _lead(settings, webhooks.LEADERSHIP_KEY, "fan-out")).run())
    sampler = background("ecommerce-sync-metrics",
                         lambda app: run_sampler(app[POOL], settings.sync_metrics_interval_s))
    app = create_service_app("ecommerce", settings, api, migrations=MIGRATIONS, event_hub=HUB_FAMILIES,
                             express_family=projection.PUBLISHED_FAMILY,
                             contexts=[projector, dispatcher, sampler], housekeeping=retention.jobs(settings))
    app[SHOP_PLACEMENT] = Placement(POLICIES[settings.orders_sourcing_policy], LocationDirectory(),
                                    settings.reservation_ttl_s)
    return app
