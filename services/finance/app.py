"""Wiring of the finance service. Its migrations come after orders' (and so inventory's): finance reads
orders.sales and inventory.locations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ledger import postgres as ledger_backend
from ledger.service.use_cases import open_ledger
from services.finance.routes import LEDGER, api
from services.orders import app as orders_app
from shared.http.app import create_service_app
from shared.migrations import MigrationSet
from shared.settings import Settings

# The ledger's migrations too: commit appends to the ledger tables, whichever service starts first.
MIGRATIONS = [*orders_app.MIGRATIONS, *ledger_backend.MIGRATIONS,
              MigrationSet("finance", Path(__file__).parent / "migrations")]


def create_app(settings: Settings, ledger: object | None = None) -> web.Application:
    """`ledger` is what commit appends to (a ledger.port.Ledger); by default the embedded backend over its
    restricted pool, with the finance identity from OMNISTOCK_DATA_DIR/ledger (shared with the ledger service)."""
    settings = settings.model_copy(
        update={"db_command_timeout_s": max(settings.db_command_timeout_s, settings.finance_command_timeout_s)})
    if ledger is not None:
        app = create_service_app("finance", settings, api, migrations=MIGRATIONS)
        app[LEDGER] = ledger
        return app

    async def embedded_ledger(app: web.Application) -> AsyncIterator[None]:
        async with open_ledger(settings, max_size=4, service="finance") as backend:
            app[LEDGER] = backend
            yield

    return create_service_app("finance", settings, api, migrations=MIGRATIONS, contexts=[embedded_ledger])
