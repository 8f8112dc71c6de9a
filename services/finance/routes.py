"""Finance HTTP: parse, authorize, call a use case, render.

Who may do what (403 for every other role, admin included: an operator is not an accountant):
- finance: everything (import settlements, declare close-outs, run, resolve, commit, read, report);
- auditor: read runs, items, settlements, close-outs and reports;
- admin: void a settlement too (the one exception: clearing up a bad import is an operator's job as
  much as an accountant's, and the void keeps who did it).

Lists page with opaque keyset cursors (shared.paging): `?cursor=` the `next_cursor` of the page before.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from services.finance import ledger_commit, use_cases
from services.finance.schemas import (
    CloseoutIn,
    CloseoutList,
    CloseoutOut,
    CloseoutQuery,
    CommitIn,
    CommitOut,
    ImportOut,
    ImportQuery,
    ItemList,
    ItemOut,
    ItemQuery,
    PriceOverrideQuery,
    PriceOverrideReport,
    ResolutionIn,
    RevenueQuery,
    RevenueReport,
    RunIn,
    RunList,
    RunOut,
    RunQuery,
    SettlementBatch,
    SettlementList,
    SettlementQuery,
    VoidByKeyIn,
    VoidIn,
    VoidOut,
)
from services.finance.settlement_file import MEDIA_TYPES, RowErrors, SettlementFile
from shared.db import Connection, transaction
from shared.errors import MalformedJson, UnsupportedMediaType
from shared.http.api import Api, Call, Reply, StreamedBody, validation_errors
from shared.idempotency import request_hash
from shared.settings import Settings

# The ledger commit appends to (a ledger.port.Ledger); None until a backend is wired in.
LEDGER = web.AppKey("finance_ledger", object)
api = Api("finance", path_types={"run_id": Annotated[int, Field(ge=1, le=2**62)],
                                 "item_no": Annotated[int, Field(ge=1, le=2**31 - 1)],
                                 "settlement_id": Annotated[int, Field(ge=1, le=2**62)]})

WRITERS = ("finance",)
READERS = ("finance", "auditor")
VOIDERS = ("finance", "admin")
RUN_404 = {404: "unknown run"}
VOID_RESPONSES = {404: "unknown settlement", 409: "voided already, or on the ledger through a committed run"}


def run_id(call: Call[Any, Any]) -> int:
    return int(call.path("run_id"))


def commit_body(call: Call[Any, Any]) -> CommitIn:
    """The commit body may be left out entirely (no override)."""
    if not call.raw_body.strip():
        return CommitIn()
    ctype = call.request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {ctype}")
    try:
        return CommitIn.model_validate(orjson.loads(call.raw_body))
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise validation_errors(exc) from None


def _settlement_limits(settings: Settings) -> tuple[int, float]:
    return settings.settlement_max_body_bytes, settings.settlement_body_timeout_s


@api.post("/v1/settlements", body=SettlementBatch, query=ImportQuery, response=ImportOut, status=201, also=(200,),
          roles=WRITERS, long_running=True, streamed_body=StreamedBody(tuple(MEDIA_TYPES), _settlement_limits),
          extra_responses={422: "bad rows, each as {line, field, problem}; nothing was imported",
                           409: "the Idempotency-Key (optional) was used with another file"})
async def import_settlements(call: Call[SettlementBatch, ImportQuery]) -> Reply:
    """Import payment settlements: a JSON list, or a file streamed as text/csv or JSON lines
    (application/x-ndjson, application/jsonl); all or nothing; rows seen before are skipped."""
    if call.stream is not None:
        kind = MEDIA_TYPES[call.request.content_type]
        file = SettlementFile(kind, RowErrors())
        batches = file.batches(call.stream.chunks())
    else:
        kind = "json"
        file = SettlementFile(kind, RowErrors())
        batches = file.listed(call.body.root)
    once = None
    if call.request.headers.get("Idempotency-Key") is not None:
        scope, key, listed = call.idempotency()
        stream, asked = call.stream, f"{kind}?{call.request.query_string}".encode()
        # A streamed file is fingerprinted as it is read (every byte), so only once it has ended.
        once = use_cases.ImportKey(scope, key, lambda: request_hash(asked + (stream.digest() if stream else listed)))
    result = await use_cases.import_settlements(call.pool, file, batches, kind, call.principal.subject,
                                                call.query.reimport_voided, once)
    return Reply(result.status, result.body, {"Idempotent-Replayed": "true"} if result.replayed else {})


@api.get("/v1/settlements", query=SettlementQuery, response=SettlementList, roles=READERS)
async def list_settlements(call: Call[None, SettlementQuery]) -> SettlementList:
    """Settlements in id order, voided ones with why and who (status=live|voided|all); filter by order_id."""
    return await use_cases.list_settlements(call.pool, call.query)


async def _void(call: Call[Any, None], target: int | tuple[str, str], reason: str) -> Reply:
    """One transaction; with an Idempotency-Key (optional here) a retry replays the first answer."""
    async def work(conn: Connection) -> tuple[int, VoidOut]:
        return 200, await use_cases.void_settlement(conn, target, reason, call.principal.subject)

    if call.request.headers.get("Idempotency-Key") is not None:
        return await call.once(work)
    async with transaction(call.pool) as conn:
        return Reply(*await work(conn))


@api.post("/v1/settlements/{settlement_id}/void", body=VoidIn, response=VoidOut, roles=VOIDERS,
          extra_responses=VOID_RESPONSES)
async def void_settlement(call: Call[VoidIn, None]) -> Reply:
    """Void a wrong settlement {reason}: it is kept (with who and why) and no run counts it any more."""
    return await _void(call, int(call.path("settlement_id")), call.body.reason)


@api.post("/v1/settlements/void", body=VoidByKeyIn, response=VoidOut, roles=VOIDERS, extra_responses=VOID_RESPONSES)
async def void_settlement_by_key(call: Call[VoidByKeyIn, None]) -> Reply:
    """Void the live settlement of {provider, external_id, reason}, as the provider's file names it."""
    return await _void(call, (call.body.provider, call.body.external_id), call.body.reason)


@api.post("/v1/closeouts", body=CloseoutIn, response=CloseoutOut, status=201, roles=WRITERS)
async def declare_closeout(call: Call[CloseoutIn, None]) -> CloseoutOut:
    """A store's end-of-day declared totals per tender; declaring the day again replaces them."""
    return await use_cases.declare_closeout(call.pool, call.body, call.principal.subject)


@api.get("/v1/closeouts", query=CloseoutQuery, response=CloseoutList, roles=READERS)
async def list_closeouts(call: Call[None, CloseoutQuery]) -> CloseoutList:
    """The close-outs in force for a business day (the latest declaration per store), by store."""
    return await use_cases.list_closeouts(call.pool, call.query)


@api.post("/v1/reconciliations", long_running=True, body=RunIn, response=RunOut, status=201, roles=WRITERS)
async def reconcile(call: Call[RunIn, None]) -> RunOut:
    """Reconcile a business day (optionally one channel or location) into a new run superseding the last."""
    return await use_cases.run_reconciliation(call.pool, call.body, call.principal.subject,
                                              use_cases.tolerances(call.settings))


@api.get("/v1/reconciliations", query=RunQuery, response=RunList, roles=READERS)
async def list_runs(call: Call[None, RunQuery]) -> RunList:
    """Runs, newest first (without their items); filter by business_day."""
    return await use_cases.list_runs(call.pool, call.query)


@api.get("/v1/reconciliations/{run_id}", response=RunOut, roles=READERS, extra_responses=RUN_404)
async def get_run(call: Call[None, None]) -> RunOut:
    """A run with its counts, totals and first items (exceptions first)."""
    return await use_cases.get_run(call.pool, run_id(call))


@api.get("/v1/reconciliations/{run_id}/items", query=ItemQuery, response=ItemList, roles=READERS,
         extra_responses=RUN_404)
async def list_items(call: Call[None, ItemQuery]) -> ItemList:
    """A run's items in item order, a page at a time; filter by class."""
    return await use_cases.list_items(call.pool, run_id(call), call.query)


@api.post("/v1/reconciliations/{run_id}/items/{item_no}/resolution", body=ResolutionIn, response=ItemOut,
          status=201, roles=WRITERS,
          extra_responses={404: "unknown run or item", 409: "matched, resolved already, superseded or committed"})
async def resolve_item(call: Call[ResolutionIn, None]) -> ItemOut:
    """Resolve an item: write it off, book an adjustment, or link it to a later settlement."""
    return await use_cases.resolve_item(call.pool, run_id(call), int(call.path("item_no")), call.body,
                                        call.principal.subject)


@api.post("/v1/reconciliations/{run_id}/commit", long_running=True, response=CommitOut, roles=WRITERS,
          extra_responses={404: "unknown run", 409: "unresolved items (no override), or superseded",
                           503: "the ledger is not available"})
async def commit_run(call: Call[None, None]) -> CommitOut:
    """Write the run's reconciled sales and summary to the ledger (optional body {override_reason})."""
    return await ledger_commit.commit_run(
        call.pool, call.request.app[LEDGER], ledger_commit.finance_identity(call.settings),  # type: ignore[arg-type]
        run_id(call), commit_body(call), call.principal.subject)


@api.get("/v1/reports/revenue", long_running=True, query=RevenueQuery, response=RevenueReport, roles=READERS)
async def revenue(call: Call[None, RevenueQuery]) -> RevenueReport:
    """Revenue by day, channel or location: orders, gross, returns, net revenue, average order value."""
    return await use_cases.revenue_report(call.pool, call.query)


@api.get("/v1/reports/revenue.csv", long_running=True, query=RevenueQuery, roles=READERS, produces="text/csv")
async def revenue_csv(call: Call[None, RevenueQuery]) -> web.Response:
    """The revenue report as CSV."""
    report = await use_cases.revenue_report(call.pool, call.query)
    name = f"revenue-{report.group_by}-{report.from_}-{report.to}.csv"
    return web.Response(text=use_cases.revenue_csv(report), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})



@api.get("/v1/reports/price-overrides", long_running=True, query=PriceOverrideQuery, response=PriceOverrideReport,
         roles=READERS)
async def price_overrides(call: Call[None, PriceOverrideQuery]) -> PriceOverrideReport:
    """Sales lines sold at a price other than the catalogue's: who set it and why (overrides), and with
    include_channel=true the online channels' own prices; a page at a time (next_cursor)."""
    return await use_cases.price_override_report(call.pool, call.query)
