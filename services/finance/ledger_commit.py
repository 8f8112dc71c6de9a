"""Commit: a run's reconciled sales and its summary onto the ledger through the ledger port
(ledger.port.Ledger), each batch signed here, in finance's process, with finance's own member key
(settings.finance_key_dir); the ledger verifies the signature and never signs for finance.

Idempotent: finance.ledger_commits records every entry written, by key (`sale:<order>:<business day>`,
`run:<run id>`), and only keys not recorded yet are appended, so committing twice writes nothing new
and a commit cut short resumes where it stopped. A session advisory lock per run keeps two commits of
one run from interleaving. Entries go in batches; each batch is one signed, all-or-nothing append
whose receipts are recorded right after it. If a crash loses the receipts at exactly that point, the
retry appends the same entries again and the ledger, which holds each (kind, entry_key) once, hands
back the receipts of what it already has (ledger.port.Ledger.append): nothing is written twice. When
only part of a batch is in the log (AlreadyAppended), or another batch was signed later and landed
first (StaleSignature), the rest is signed again and appended.

Which ledger: `app[LEDGER]`, set by finance's create_app: the embedded backend by default (tests pass
another ledger.port.Ledger). A missing finance identity answers 503 and the run stays uncommitted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import Any, Protocol

import asyncpg

from ledger.encoding import format_timestamp
from ledger.identity import Identity, IdentityMissing, load_identity
from ledger.policy import RECONCILED_SALE, RECONCILIATION_SUMMARY
from ledger.port import AlreadyAppended, DuplicateEntryKey
from ledger.signing import SignatureRefused, StaleSignature, Submission
from ledger.submit import sign_and_append
from services.finance import domain
from services.finance import repository as repo
from services.finance.schemas import CommitIn, CommitOut
from services.finance.use_cases import unresolved_count
from shared.db import Pool, transaction
from shared.errors import NotFound, ServiceUnavailable
from shared.settings import Settings

BATCH = 2000
FINANCE_ORG = "finance"


class Receipt(Protocol):
    seq: int
    leaf_hash: str


class Appender(Protocol):
    """The part of ledger.port.Ledger that commit needs."""

    async def append(self, entries: list[dict[str, Any]], submission: Submission) -> list[Receipt]: ...


IdentityLoader = Callable[[], Identity]


def finance_identity(settings: Settings) -> IdentityLoader:
    """Finance's member, its key from finance's own folder (settings.finance_key_dir), read on use."""
    def load() -> Identity:
        try:
            return load_identity(settings.data_dir, FINANCE_ORG, settings.finance_key_dir)
        except (IdentityMissing, FileNotFoundError, ValueError) as exc:
            raise ServiceUnavailable(f"the finance ledger identity is not available: {exc}") from None

    return load


def sale_key(order_id: str, business_day: date) -> str:
    return f"sale:{order_id}:{business_day.isoformat()}"


def sale_entry(run: asyncpg.Record, item: asyncpg.Record) -> dict[str, Any]:
    resolution = None
    if item["action"] is not None:
        resolution = {"action": item["action"], "reason": item["reason"],
                      "amount": None if item["amount"] is None else f"{item['amount']:.2f}",
                      "settlement_id": item["settlement_id"], "resolved_by": item["resolved_by"],
                      "resolved_at": format_timestamp(item["resolved_at"])}
    return {
        "kind": RECONCILED_SALE, "entry_key": sale_key(str(item["order_id"]), run["business_day"]),
        "run_id": run["id"], "item_no": item["item_no"], "business_day": run["business_day"].isoformat(),
        "order_id": str(item["order_id"]), "channel": item["channel"], "location_id": item["location_id"],
        "currency": item["currency"], "class": item["class"], "sales_total": f"{item['sales_total']:.2f}",
        "expected": f"{item['expected']:.2f}", "paid": f"{item['paid']:.2f}",
        "sale_ids": list(item["sale_ids"]), "settlement_ids": list(item["settlement_ids"]), "resolution": resolution,
    }


def summary_entry(run: asyncpg.Record, actor: str, override_reason: str | None) -> dict[str, Any]:
    return {
        "kind": RECONCILIATION_SUMMARY, "entry_key": f"run:{run['id']}", "run_id": run["id"],
        "business_day": run["business_day"].isoformat(), "channel": run["channel"],
        "location_id": run["location_id"], "counts": dict(run["counts"]), "totals": list(run["totals"]),
        "item_count": run["item_count"], "items_root": run["items_root"], "resolved": run["resolved"],
        "amount_tolerance": f"{run['amount_tolerance']:.2f}", "cash_tolerance": f"{run['cash_tolerance']:.2f}",
        "committed_by": actor, "override": None if override_reason is None else {"reason": override_reason,
                                                                                 "by": actor},
    }


async def _pending_sales(pool: Pool, run: asyncpg.Record) -> AsyncIterator[list[dict[str, Any]]]:
    after = 0
    while True:
        rows = await repo.uncommitted_sale_items(pool, run["id"], run["business_day"], after, BATCH)
        if not rows:
            return
        after = rows[-1]["item_no"]
        yield [sale_entry(run, r) for r in rows]


async def commit_run(pool: Pool, ledger: Appender | None, identity: IdentityLoader, run_id: int, body: CommitIn,
                     actor: str) -> CommitOut:
    async with pool.acquire() as lock_conn:
        await repo.lock_run_commit(lock_conn, run_id)
        try:
            run = await repo.get_run(pool, run_id)
            if run is None:
                raise NotFound(f"unknown reconciliation run {run_id}")
            if run["superseded_by"] is not None:
                raise domain.RunSuperseded(f"run {run_id} was superseded by run {run['superseded_by']}")
            await _refuse_stale(pool, run)
            unresolved = unresolved_count(run)
            override = run["override_reason"] if run["committed_at"] is not None else body.override_reason
            if unresolved and override is None:
                raise domain.UnresolvedItems(f"run {run_id} has {unresolved} unresolved item(s); resolve them or "
                                             "commit with an override_reason", unresolved=unresolved)
            if ledger is None:
                raise ServiceUnavailable("the ledger is not available yet; the run stays uncommitted")
            signer = identity()
            written = 0
            async for entries in _pending_sales(pool, run):
                await _append(pool, ledger, signer, run_id, entries)
                written += len(entries)
            summary_key = f"run:{run_id}"
            if not await repo.committed(pool, summary_key):
                await _append(pool, ledger, signer, run_id, [summary_entry(run, actor, override)])
                written += 1
            async with transaction(pool) as conn:
                await repo.mark_committed(conn, run_id, actor, override)
            total = await repo.commit_count(pool, run_id)
        finally:
            await repo.unlock_run_commit(lock_conn, run_id)
    # max: sales a newer run of the day committed meanwhile are recorded under that run (repo.record_commits).
    return CommitOut(run_id=run_id, status="committed", written=written, already=max(0, total - written),
                     override_reason=override)


async def _refuse_stale(pool: Pool, run: asyncpg.Record) -> None:
    """A run that counted a settlement voided since would put a payment nobody stands by on the ledger.
    Voids take this run's commit lock (use_cases.void_settlement), so none lands while a commit runs."""
    voided = await repo.voided_ids(pool)
    if not voided:
        return
    settlement_id = await repo.voided_in_run(pool, run["id"], voided)
    if settlement_id is not None:
        raise domain.RunStale(f"run {run['id']} counted settlement {settlement_id}, which has been voided since; "
                              f"reconcile {run['business_day']} again and commit the new run",
                              settlement_id=settlement_id)


async def _append(pool: Pool, ledger: Appender, signer: Identity, run_id: int, entries: list[dict[str, Any]]) -> None:
    try:
        receipts = await _append_signed(ledger, signer, entries)
    except (DuplicateEntryKey, AlreadyAppended) as exc:
        # A commit cut short between the ledger's write and ours, retried after the entry changed (another
        # finance user's name on the summary, say): the log's first statement of the fact stands. Record
        # its receipt, and append the rest.
        await _record(pool, run_id, [(entries[i], r) for i, r in sorted(exc.existing.items())])
        rest = [e for i, e in enumerate(entries) if i not in exc.existing]
        if rest:
            await _append(pool, ledger, signer, run_id, rest)
        return
    await _record(pool, run_id, list(zip(entries, receipts, strict=True)))


async def _append_signed(ledger: Appender, signer: Identity, entries: list[dict[str, Any]]) -> list[Receipt]:
    try:
        receipts: list[Receipt] = await sign_and_append(ledger, signer, entries)
    except StaleSignature:
        raise ServiceUnavailable("the ledger kept refusing finance's signatures as stale; retry") from None
    except SignatureRefused as exc:  # e.g. finance's member certificate revoked or expired
        raise ServiceUnavailable(f"the ledger refused finance's signature: {exc}") from None
    return receipts


async def _record(pool: Pool, run_id: int, written: list[tuple[dict[str, Any], Receipt]]) -> None:
    async with transaction(pool) as conn:
        await repo.record_commits(conn, run_id, [
            (e["entry_key"], e["kind"], {"seq": r.seq, "leaf_hash": r.leaf_hash}) for e, r in written])
