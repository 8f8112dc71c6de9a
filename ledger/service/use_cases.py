"""What the ledger API and CLI do, one function per use case, each through the port (ledger.port).

Who may do what is ledger.policy; a denial becomes a 403 Forbidden and one warning log line naming
the principal and the action. Appends carry their submitter's signature (ledger.signing.Submission);
the backend refuses anything else and `append_signed` turns its refusals into problems
(ledger.service.problems). The finance service signs with its own member key and appends in-process,
over a port it opens with `open_ledger(settings, service="finance")` (no checkpoint key there):

    async with open_ledger(settings, service="finance") as ledger:
        receipts = await ledger.append(entries, sign_submission(finance_identity, entries))

Only the ledger service opens the port with `checkpoint_signer=member_identity(settings, "ledger")`.

The embedded backend works through its own pool, logged in as the ledger's role (or, in finance's
process, finance's, which is a member of it: shared/roles.py), whose connections all `SET ROLE
omnistock_ledger` (INSERT and SELECT on schema ledger, nothing else). Logged in as omnistock_ledger
the SET ROLE changes nothing; it matters where a deployment gives no per-service URL and the pool
falls back to the owner's (a warning says so), and for finance, whose own grants are wider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ledger import policy, signing
from ledger.identity import Identity, describe_identities, load_identity
from ledger.port import (
    AlreadyAppended,
    BadRange,
    DuplicateEntryKey,
    EntryNotFound,
    Json,
    Ledger,
    NotCosigned,
    Receipt,
    Submission,
)
from ledger.postgres import LEDGER_ROLE
from ledger.postgres.backend import PostgresLedger
from ledger.revenue import FinanceRevenueSource, RevenueTally, compare
from ledger.service import problems
from ledger.verify import VerificationReport
from shared.db import create_pool, init_connection
from shared.errors import Conflict, Forbidden, NotFound, ValidationFailed, field_error
from shared.logging import get_logger
from shared.roles import service_dsn
from shared.settings import Settings

log = get_logger("omnistock.ledger")


async def _restricted_connection(conn: asyncpg.Connection) -> None:
    await init_connection(conn)
    # Every statement on this connection runs with omnistock_ledger's grants (see module docstring); the
    # pool does not reset sessions on release, and RESET ALL would leave `role` alone anyway.
    await conn.execute(f"SET ROLE {LEDGER_ROLE}")


async def create_ledger_pool(settings: Settings, max_size: int | None = None,
                             service: str = "ledger") -> asyncpg.Pool:
    """`service` names whose login the pool uses: the ledger's own, or finance's when finance appends
    in-process (finance's role is a member of omnistock_ledger, shared/roles.py)."""
    name = "omnistock-ledger" if service == "ledger" else f"omnistock-{service}-ledger"
    # No session reset on release (a round trip per request, 15 % of the ledger process's CPU serving
    # proofs): the one session lock taken on this pool, the audit job's, is released or its connection
    # closed (audit_job.py).
    return await create_pool(service_dsn(settings, service), min_size=1, max_size=max_size or settings.db_pool_max,
                             command_timeout=max(settings.db_command_timeout_s, 60.0),  # audits, exports read a lot
                             connect_timeout=settings.db_connect_timeout_s, application_name=name,
                             session_state=False, init=_restricted_connection)


def member_identity(settings: Settings, org: str) -> Identity:
    """`org`'s signing member, its key read from that org's own folder (settings.<org>_key_dir)."""
    return load_identity(settings.data_dir, org, getattr(settings, f"{org}_key_dir", None))


@asynccontextmanager
async def open_ledger(settings: Settings, max_size: int | None = None, service: str = "ledger",
                      checkpoint_signer: Identity | None = None) -> AsyncIterator[Any]:
    """The port of settings.ledger_backend. Embedded (default): over a restricted pool; identities are not
    created here (`omnistock ledger init` does that); only a port given the ledger identity cuts
    checkpoints. Fabric: over the Gateway of the network `omnistock ledger fabric up` described in
    <fabric_dir>/network.json, as the retailer's client (the peers' endorsements sign checkpoints)."""
    if settings.ledger_backend == "fabric":
        import json

        from ledger.fabric.backend import open_fabric_ledger
        from ledger.fabric.network import fabric_dir

        described = fabric_dir(settings) / "network.json"
        if not described.is_file():
            raise RuntimeError(f"OMNISTOCK_LEDGER_BACKEND=fabric but {described} does not exist: run "
                               "`omnistock ledger fabric up` first")
        async with open_fabric_ledger(settings, json.loads(described.read_text())) as port:
            yield port
        return
    pool = await create_ledger_pool(settings, max_size, service)
    try:
        yield PostgresLedger(pool, settings.data_dir, checkpoint_signer=checkpoint_signer,
                             checkpoint_every=settings.ledger_checkpoint_every,
                             max_export_entries=settings.ledger_max_export_entries,
                             max_clock_skew_s=settings.ledger_max_clock_skew_s)
    finally:
        await pool.close()


def _denied(principal: str, exc: policy.PermissionDenied) -> Forbidden:
    log.warning("ledger access denied", principal=principal, action=exc.action, reason=exc.detail)
    return Forbidden(f"{exc.action}: {exc.detail}")


def authorize(principal: str, check: Any, *args: Any) -> Any:
    """Run a ledger.policy check; a denial is a logged 403."""
    try:
        return check(*args)
    except policy.PermissionDenied as exc:
        raise _denied(principal, exc) from None


async def append_signed(ledger: Ledger, role: str, entries: Sequence[Mapping[str, Any]], submission: Submission,
                        principal: str | None = None) -> list[Receipt]:
    """Append entries its submitter signed, if `role` may append every kind and the ledger accepts the
    signature (the backend checks signer, signature, time and the signer's policy)."""
    who = principal or role
    for entry in entries:
        authorize(who, policy.require_role_append, role, str(entry.get("kind")))
    try:
        return await ledger.append(entries, submission)
    except policy.PermissionDenied as exc:
        log.warning("ledger signer refused", principal=who, signer=submission.org, action=exc.action)
        raise problems.SignerNotAllowed(f"signed by {submission.org!r}: {exc.action}: {exc.detail}") from None
    except signing.SignatureRefused as exc:
        log.warning("ledger signature refused", principal=who, signer=submission.org, reason=str(exc))
        raise _signature_problem(exc) from None
    except AlreadyAppended as exc:
        raise problems.EntriesAlreadyInLog(str(exc), existing=_positions(exc.existing)) from None
    except DuplicateEntryKey as exc:
        raise Conflict(f"{exc}; the log holds them at seqs {_positions(exc.existing)}") from None
    except ValueError as exc:  # e.g. a float inside an extra field: no canonical encoding
        raise field_error("entries", str(exc)) from None


def _positions(existing: Mapping[int, Receipt]) -> dict[str, int]:
    return {f"entries.{i}": r.seq for i, r in sorted(existing.items())}


def _signature_problem(exc: signing.SignatureRefused) -> Exception:
    if isinstance(exc, signing.StaleSignature):
        return problems.StaleSignature(str(exc))
    if isinstance(exc, signing.TimestampRefused):
        return problems.SignatureTimestampRefused(str(exc))
    if isinstance(exc, signing.UntrustedSigner):
        return problems.UntrustedSigner(str(exc))
    return problems.BadBatchSignature(str(exc))


def checkpoint_view(checkpoint: Json) -> Json:
    """A checkpoint with what the policy requires of its signers (GET /v1/ledger/checkpoint)."""
    signed_by = {s["org"] for s in checkpoint["signatures"]}
    return {**checkpoint, "required_signers": list(policy.CHECKPOINT_SIGNERS),
            "missing_signers": policy.missing_signers(signed_by)}


async def checkpoint(ledger: Ledger, role: str, principal: str) -> Json:
    authorize(principal, policy.require_read_log, role)
    # A log with entries but no checkpoint yet (before the first N entries or T seconds) signs one now.
    latest = await ledger.checkpoint() or await ledger.cut_checkpoint()
    if latest is None:
        raise NotFound("the ledger has no checkpoint yet (nothing appended)")
    return checkpoint_view(latest)


async def entry(ledger: Ledger, role: str, principal: str, seq: int) -> Json:
    authorize(principal, policy.require_read_log, role)
    try:
        found = await ledger.entry(seq)
    except EntryNotFound as exc:
        raise NotFound(str(exc)) from None
    authorize(principal, policy.require_read_kind, role, found["entry"].get("kind"))
    return found


async def find(ledger: Ledger, role: str, principal: str, entry_key: str | None, order_id: str | None) -> Json:
    """Seqs of the entries with that key, or of an order's reconciled sales, that `role` may read."""
    authorize(principal, policy.require_read_log, role)
    found = await ledger.find(entry_key=entry_key, order_id=order_id)
    return {"items": [{"seq": seq, "kind": kind} for seq, kind in found if policy.may_read_kind(role, kind)]}


async def consistency(ledger: Ledger, role: str, principal: str, first: int, second: int | None) -> Json:
    authorize(principal, policy.require_read_log, role)
    try:
        return await ledger.consistency(first, second)
    except BadRange as exc:
        raise ValidationFailed([{"field": "second" if second is not None else "first", "problem": str(exc)}]) \
            from None


def identities(settings: Settings, role: str, principal: str) -> list[dict[str, Any]]:
    authorize(principal, policy.require_read_log, role)
    return describe_identities(settings.data_dir)


async def export(ledger: Ledger, role: str, principal: str, first: int, last: int, since: int | None) -> Json:
    authorize(principal, policy.require_export, role)
    try:
        return await ledger.export(first, last, since)
    except NotCosigned as exc:
        raise problems.CheckpointNotCosigned(str(exc), required_signers=list(policy.CHECKPOINT_SIGNERS)) from None
    except BadRange as exc:
        raise ValidationFailed([{"field": "to", "problem": str(exc)}]) from None


def audit_json(report: VerificationReport) -> Json:
    return {
        "ok": report.ok, "tree_size": report.tree_size, "entries_checked": report.entries_checked,
        "batches_checked": report.batches_checked, "first_bad_seq": report.first_bad_seq,
        "failures": [{"seq": f.seq, "message": f.message} for f in report.failures],
        "checkpoint_signers": report.checkpoint_signers, "required_signers": report.required_signers,
        "cosigned_size": report.cosigned_size,
    }


async def revenue(ledger: Ledger, date_from: str, date_to: str,
                  finance: FinanceRevenueSource | None = None) -> Json:
    """Reconciled sales per day, channel and location from the ledger, read during a full audit."""
    if date_from > date_to:
        raise field_error("to", "must not be before from")
    tally = RevenueTally(date_from, date_to)
    report = await ledger.audit(tally)
    bad = {f.seq for f in report.failures if f.seq is not None}
    excluded = sorted((bad & tally.sales.keys()) | set(tally.unreadable))
    groups = tally.groups(excluded)
    comparison = None
    if finance is not None:  # the hook: finance's own report, same grouping
        comparison = compare(groups, await finance.revenue_groups(date_from, date_to))
    return {
        "from": date_from, "to": date_to, "verified": report.ok, "first_bad_seq": report.first_bad_seq,
        "excluded_seqs": excluded, "groups": groups,
        "failures": [{"seq": f.seq, "message": f.message} for f in report.failures],
        "comparison": comparison,
    }
