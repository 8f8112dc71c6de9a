"""Wiring of the finance service. Its migrations come after orders' (and so inventory's): finance reads
orders.sales and inventory.locations."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ledger import postgres as ledger_backend
from ledger.cosign import Cosigner, CosignRefused
from ledger.identity import IdentityMissing, TrustCache, msp_dir
from ledger.port import Ledger
from ledger.service.use_cases import member_identity, open_ledger
from services.finance.routes import LEDGER, api
from services.orders import app as orders_app
from shared.http.app import create_service_app
from shared.logging import get_logger
from shared.migrations import MigrationSet
from shared.settings import Settings

# The ledger's migrations too: commit appends to the ledger tables, whichever service starts first.
MIGRATIONS = [*orders_app.MIGRATIONS, *ledger_backend.MIGRATIONS,
              MigrationSet("finance", Path(__file__).parent / "migrations")]
log = get_logger("omnistock.finance")


def create_app(settings: Settings, ledger: object | None = None) -> web.Application:
    """`ledger` is what commit appends to (a ledger.port.Ledger); by default the embedded backend over its
    restricted pool. Finance signs its batches and co-signs checkpoints here, with finance's member key
    (settings.finance_key_dir); this process never holds the ledger's key or any CA key."""
    settings = settings.model_copy(
        update={"db_command_timeout_s": max(settings.db_command_timeout_s, settings.finance_command_timeout_s)})
    if ledger is not None:
        app = create_service_app("finance", settings, api, migrations=MIGRATIONS, session_state=True)
        app[LEDGER] = ledger
        return app

    async def embedded_ledger(app: web.Application) -> AsyncIterator[None]:
        async with open_ledger(settings, max_size=4, service="finance") as backend:
            app[LEDGER] = backend
            if settings.ledger_backend == "fabric":  # the organisations' peers endorse every checkpoint
                yield
                return
            cosigning = asyncio.create_task(_cosign_checkpoints(backend, settings))
            yield
            cosigning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cosigning

    return create_service_app("finance", settings, api, migrations=MIGRATIONS, contexts=[embedded_ledger],
                              session_state=True)


async def _cosign_checkpoints(ledger: Ledger, settings: Settings) -> None:
    """Every finance_cosign_interval_s: co-sign the ledger's newest checkpoint once it is shown to extend
    the last one finance co-signed (ledger.cosign). A refusal is an alarm in the log, never a signature."""
    cosigner: Cosigner | None = None
    while True:
        await asyncio.sleep(settings.finance_cosign_interval_s)
        try:
            if cosigner is None:
                trust = TrustCache(msp_dir(settings.data_dir))
                cosigner = Cosigner(ledger, member_identity(settings, "finance"), trust)
            await cosigner.cosign_latest()
        except IdentityMissing as exc:
            log.warning("finance cannot co-sign checkpoints: no finance identity", reason=str(exc))
        except CosignRefused as exc:
            log.error("finance refuses to co-sign the ledger's checkpoint", reason=str(exc))
        except Exception:  # a blip must not stop the co-signing
            log.exception("co-signing failed; retrying next tick")
