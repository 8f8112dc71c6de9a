"""Wiring of the ledger service: the embedded backend over its restricted pool, and the checkpoint timer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ledger.postgres import MIGRATIONS
from ledger.service.audit_job import AuditJobs
from ledger.service.routes import AUDIT, LEDGER, api
from ledger.service.use_cases import log, open_ledger
from shared.http.app import create_service_app
from shared.settings import Settings

__all__ = ["MIGRATIONS", "create_app"]


def create_app(settings: Settings) -> web.Application:
    async def backend(app: web.Application) -> AsyncIterator[None]:
        # After the shared database context: the migrations (and so the restricted role) exist by now.
        async with open_ledger(settings) as ledger:
            app[LEDGER] = ledger
            app[AUDIT] = AuditJobs(ledger, settings.ledger_audit_max_age_s, settings.ledger_audit_wait_s)
            timer = asyncio.create_task(_cut_checkpoints(app, settings.ledger_checkpoint_interval_s))
            yield
            await app[AUDIT].close()
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    return create_service_app("ledger", settings, api, migrations=MIGRATIONS, contexts=[backend])


async def _cut_checkpoints(app: web.Application, interval_s: float) -> None:
    """A signed checkpoint at least every `interval_s` while the tree grows (the N-entries rule is in append)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await app[LEDGER].cut_checkpoint()
        except Exception:  # a blip must not stop the timer
            log.exception("checkpoint timer failed; retrying next tick")
