"""Ledger HTTP: parse, call a use case (which applies ledger.policy), render.

Every route takes any API key and lets ledger.policy decide, so each denial is the same logged 403:
stores and the shop read nothing; ops (and admin) read summaries, checkpoints and proofs; finance and
auditors read everything and export; only finance appends reconciled sales and summaries, and only
with a batch its own member signed (the finance API key alone is not enough: this service holds no
key but its checkpoint key).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ledger import policy
from ledger.postgres.backend import PostgresLedger
from ledger.service import problems, use_cases
from ledger.service.audit_job import STATUS_PATH, AuditJobs
from ledger.service.schemas import (
    AppendIn,
    AppendOut,
    AuditJobOut,
    AuditOut,
    ConsistencyOut,
    ConsistencyQuery,
    EntryOut,
    ExportQuery,
    FindQuery,
    FoundList,
    IdentitiesOut,
    LatestCheckpointOut,
    ReceiptOut,
    RevenueOut,
    RevenueQuery,
    Seq,
)
from shared.http.api import Api, Call, Reply

LEDGER = web.AppKey("ledger", PostgresLedger)
AUDIT = web.AppKey("audit", AuditJobs)
FORBIDDEN = {403: "not allowed by the ledger policy for this role"}

api = Api("ledger", path_types={"seq": Seq})


def _ledger(call: Call[Any, Any]) -> PostgresLedger:
    return call.request.app[LEDGER]


@api.post("/v1/ledger/entries", body=AppendIn, response=AppendOut, status=201, idempotent=True,
          extra_responses={403: "not allowed by the ledger policy for this role, or for the signer's organisation",
                           409: "Idempotency-Key reused with another body, an entry_key already in the log "
                                "with other content, some entries already in the log, or signed before the "
                                "log's latest batch",
                           422: "unsigned, a signature that does not verify over these entries, an untrusted, "
                                "expired or revoked certificate, or a timestamp too far from the ledger's clock"})
async def post_entries(call: Call[AppendIn, None]) -> Reply:
    """Append entries as one batch signed by its submitter (`submission`: finance's member, signing where
    finance runs, e.g. `omnistock ledger sign`); finance keys only."""
    entries = call.body.raw_entries()
    for entry in entries:  # refuse before the idempotency claim, so a denial stores nothing
        use_cases.authorize(call.principal.subject, policy.require_role_append, call.principal.role, entry["kind"])
    if call.body.submission is None:
        raise problems.UnsignedBatch("`submission` is missing: sign the entries with the submitting organisation's "
                                     "member key (omnistock ledger sign) and send the signature with them")
    submission = call.body.submission.submission()

    async def work(conn: Any) -> tuple[int, AppendOut]:
        # The append commits in the ledger's own transaction (its restricted pool) while the
        # Idempotency-Key claim holds its row lock here, so concurrent retries wait and replay. A crash
        # between the two commits lets a retry through; entries with an entry_key are then found in
        # the log, not written again (entries without one would be).
        receipts = await use_cases.append_signed(_ledger(call), call.principal.role, entries, submission,
                                                 call.principal.subject)
        return 201, AppendOut(receipts=[ReceiptOut(seq=r.seq, leaf_hash=r.leaf_hash, batch_id=r.batch_id)
                                        for r in receipts])

    return await call.once(work)


@api.get("/v1/ledger/checkpoint", response=LatestCheckpointOut,
         extra_responses={**FORBIDDEN, 404: "no checkpoint yet"})
async def get_checkpoint(call: Call[None, None]) -> dict[str, Any]:
    """The latest checkpoint: tree size, root hash, time, every signature it carries (the ledger's, and
    finance's co-signature once made), the signers the policy requires and those still missing."""
    return await use_cases.checkpoint(_ledger(call), call.principal.role, call.principal.subject)


@api.get("/v1/ledger/entries", query=FindQuery, response=FoundList, extra_responses=FORBIDDEN)
async def find_entries(call: Call[None, FindQuery]) -> dict[str, Any]:
    """Seqs of the entries with an `entry_key`, or of an `order_id`'s reconciled sales (give one of
    them), that the caller may read; read each with GET /v1/ledger/entries/{seq}, its proof included."""
    return await use_cases.find(_ledger(call), call.principal.role, call.principal.subject,
                                call.query.entry_key, call.query.order_id)


@api.get("/v1/ledger/entries/{seq}", response=EntryOut, extra_responses={**FORBIDDEN, 404: "no such entry"})
async def get_entry(call: Call[None, None]) -> dict[str, Any]:
    """One entry with its RFC 9162 inclusion proof against the latest checkpoint."""
    return await use_cases.entry(_ledger(call), call.principal.role, call.principal.subject, int(call.path("seq")))


@api.get("/v1/ledger/consistency", query=ConsistencyQuery, response=ConsistencyOut, extra_responses=FORBIDDEN)
async def get_consistency(call: Call[None, ConsistencyQuery]) -> dict[str, Any]:
    """RFC 9162 consistency proof between tree sizes `first` and `second` (default: the latest checkpoint)."""
    return await use_cases.consistency(_ledger(call), call.principal.role, call.principal.subject,
                                       call.query.first, call.query.second)


@api.get("/v1/ledger/identities", response=IdentitiesOut, extra_responses=FORBIDDEN)
async def get_identities(call: Call[None, None]) -> IdentitiesOut:
    """The organisations, their roles, CA and member certificates (PEM) that sign entries and checkpoints."""
    items = use_cases.identities(call.settings, call.principal.role, call.principal.subject)
    return IdentitiesOut.model_validate({"items": items})


@api.get("/v1/ledger/export", long_running=True, query=ExportQuery,
         extra_responses={**FORBIDDEN, 409: "no checkpoint co-signed by every organisation covers `to` yet"})
async def get_export(call: Call[None, ExportQuery]) -> dict[str, Any]:
    """A bundle for seqs from..to that `omnistock ledger verify BUNDLE --trust DIR` checks offline."""
    q = call.query
    return await use_cases.export(_ledger(call), call.principal.role, call.principal.subject, q.from_, q.to, q.since)


@api.get("/v1/ledger/audit", long_running=True, response=AuditOut, accepted=AuditJobOut, extra_responses=FORBIDDEN)
async def get_audit(call: Call[None, None]) -> AuditOut | Reply:
    """The whole stored log re-checked against its checkpoints and batch signatures (finance, auditor):
    the stored result for the current tree size, else a background run's (202 while it runs)."""
    use_cases.authorize(call.principal.subject, policy.require_export, call.principal.role)
    jobs = call.request.app[AUDIT]
    result, current = await jobs.result()
    if result is not None:
        return AuditOut.model_validate(result.as_json(current))
    status = AuditJobOut.model_validate(await jobs.status())
    return Reply(202, status, {"Retry-After": str(jobs.retry_after_s()), "Location": STATUS_PATH})


@api.get(STATUS_PATH, response=AuditJobOut, extra_responses=FORBIDDEN)
async def get_audit_job(call: Call[None, None]) -> AuditJobOut:
    """The background audit: idle, waiting or running, and the latest result (starts nothing)."""
    use_cases.authorize(call.principal.subject, policy.require_export, call.principal.role)
    return AuditJobOut.model_validate(await call.request.app[AUDIT].status())


@api.get("/v1/ledger/revenue", long_running=True, query=RevenueQuery, response=RevenueOut, extra_responses=FORBIDDEN)
async def get_revenue(call: Call[None, RevenueQuery]) -> dict[str, Any]:
    """Reconciled sales per business day, channel and location, summed from verified ledger entries, and
    every group where they differ from finance's revenue."""
    from services.finance.use_cases import FinanceRevenue  # the auditor's other side; finance owns its SQL

    use_cases.authorize(call.principal.subject, policy.require_export, call.principal.role)
    return await use_cases.revenue(_ledger(call), call.query.from_, call.query.to, FinanceRevenue(call.pool))
