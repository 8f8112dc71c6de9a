"""Wiring of the inventory service."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.inventory.routes import STREAM_FAMILIES, api
from shared.http.app import create_service_app
from shared.migrations import MigrationSet
from shared.settings import Settings

MIGRATIONS = [MigrationSet("inventory", Path(__file__).parent / "migrations")]


def create_app(settings: Settings) -> web.Application:
    return create_service_app("inventory", settings, api, migrations=MIGRATIONS, event_hub=STREAM_FAMILIES)
