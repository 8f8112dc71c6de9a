"""Wiring of the finance service. Its migrations come after orders' (and so inventory's): finance reads
orders.sales and inventory.locations."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.finance.routes import LEDGER, api
from services.orders import app as orders_app
from shared.http.app import create_service_app
from shared.migrations import MigrationSet
from shared.settings import Settings

MIGRATIONS = [*orders_app.MIGRATIONS, MigrationSet("finance", Path(__file__).parent / "migrations")]


def create_app(settings: Settings, ledger: object | None = None) -> web.Application:
    """`ledger` is what commit appends to (a ledger.port.Ledger). None answers commits with 503: the
    embedded backend is not wired in yet (pass it here, or build it in a cleanup context, once it is)."""
    app = create_service_app("finance", settings, api, migrations=MIGRATIONS)
    app[LEDGER] = ledger
    return app
