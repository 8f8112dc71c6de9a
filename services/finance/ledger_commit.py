"""Commit: a run's reconciled sales and its summary onto the ledger, through the ledger port, signed
with the finance identity. Idempotent: finance.ledger_commits records every entry written, by key.

The ledger port (ledger/port.py) is being built alongside; until it exists, commit answers 503.
"""

from __future__ import annotations

import importlib

from services.finance import domain
from services.finance import repository as repo
from services.finance.schemas import CommitIn, CommitOut
from services.finance.use_cases import unresolved_count
from shared.db import Pool, transaction
from shared.errors import NotFound, ServiceUnavailable
from shared.settings import Settings


def ledger_port() -> object:
    try:
        return importlib.import_module("ledger.port")
    except ModuleNotFoundError:
        raise ServiceUnavailable("the ledger is not available yet; the run stays uncommitted") from None


async def commit_run(pool: Pool, settings: Settings, run_id: int, body: CommitIn, actor: str) -> CommitOut:
    async with transaction(pool) as conn:
        run = await repo.get_run(conn, run_id, lock=True)
        if run is None:
            raise NotFound(f"unknown reconciliation run {run_id}")
        if run["superseded_by"] is not None:
            raise domain.RunSuperseded(f"run {run_id} was superseded by run {run['superseded_by']}")
        if unresolved_count(run) and body.override_reason is None and run["committed_at"] is None:
            raise domain.UnresolvedItems(f"run {run_id} has {unresolved_count(run)} unresolved item(s); resolve "
                                         "them or commit with an override_reason", unresolved=unresolved_count(run))
    ledger_port()
    raise ServiceUnavailable("the ledger is not available yet; the run stays uncommitted")
