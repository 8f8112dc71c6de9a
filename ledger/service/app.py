"""Wiring of the ledger service: the embedded backend over its restricted pool, with the ledger's own
checkpoint key and no other, and the timer that cuts checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from ledger.postgres import MIGRATIONS
from ledger.service.audit_job import AuditJobs
from ledger.service.routes import AUDIT, LEDGER, api
from ledger.service.use_cases import log, member_identity, open_ledger
from shared.http.app import create_service_app
from shared.settings import Settings

__all__ = ["MIGRATIONS", "create_app"]

TICK_S = 1.0  # how often the timer looks whether a checkpoint is due


def create_app(settings: Settings) -> web.Application:
    async def backend(app: web.Application) -> AsyncIterator[None]:
        # The ledger identity only (settings.ledger_key_dir): entries come signed by their submitters.
        signer = member_identity(settings, "ledger")
        # After the shared database context: the migrations (and so the restricted role) exist by now.
        async with open_ledger(settings, checkpoint_signer=signer) as ledger:
            app[LEDGER] = ledger
            app[AUDIT] = AuditJobs(ledger, settings.ledger_audit_max_age_s, settings.ledger_audit_wait_s)
            timer = asyncio.create_task(_cut_checkpoints(app, settings))
            yield
            await app[AUDIT].close()
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    return create_service_app("ledger", settings, api, migrations=MIGRATIONS, contexts=[backend])


async def _cut_checkpoints(app: web.Application, settings: Settings) -> None:
    """A signed checkpoint once `ledger_checkpoint_every` entries went in, or at least every
    `ledger_checkpoint_interval_s` while the tree grows: finance appends in its own process, which holds
    no ledger key, so its appends never cut one; this timer does, within a tick."""
    tick = min(TICK_S, settings.ledger_checkpoint_interval_s)
    while True:
        await asyncio.sleep(tick)
        try:
            await app[LEDGER].cut_checkpoint_if_due(settings.ledger_checkpoint_interval_s)
        except Exception:  # a blip must not stop the timer
            log.exception("checkpoint timer failed; retrying next tick")
