"""Wiring of the orders service: routes, migrations (inventory's first: orders reserves through its
functions), the sourcing policy, and the reservation-expiry sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.inventory import app as inventory_app
from services.orders.group_placement import PlacementGroup
from services.orders.repository import LocationDirectory
from services.orders.routes import PLACEMENT, PLACEMENT_GROUP, api
from services.orders.sourcing import POLICIES, SourcingPolicy
from services.orders.use_cases import Placement, expire_reservations
from shared.http.app import create_service_app
from shared.http.keys import POOL
from shared.logging import get_logger
from shared.migrations import MigrationSet
from shared.settings import Settings

MIGRATIONS = [*inventory_app.MIGRATIONS, MigrationSet("orders", Path(__file__).parent / "migrations")]
log = get_logger("omnistock.orders.sweeper")


async def sweep_forever(app: web.Application, interval_s: float) -> None:
    """Release expired reservations every `interval_s`; a failed sweep is logged and tried again."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            expired = await expire_reservations(app[POOL])
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be restarting; the next round catches up, nothing is lost
            log.exception("reservation sweep failed")
            continue
        if expired:
            log.info("reservations expired", orders=expired)


def create_app(settings: Settings, sourcing: SourcingPolicy | None = None) -> web.Application:
    async def run_sweeper(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep_forever(app, settings.reservation_sweep_interval_s))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def placement_group(app: web.Application) -> AsyncIterator[None]:
        group = PlacementGroup(app[POOL], app[PLACEMENT])
        app[PLACEMENT_GROUP] = group
        yield
        await group.close()

    app = create_service_app("orders", settings, api, migrations=MIGRATIONS, contexts=[placement_group, run_sweeper])
    app[PLACEMENT] = Placement(sourcing or POLICIES[settings.orders_sourcing_policy], LocationDirectory(),
                               settings.reservation_ttl_s, settings.store_reservation_ttl_s,
                               settings.store_max_discount_pct, settings.max_unpaid_units_per_store_key)
    return app
