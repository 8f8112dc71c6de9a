"""What the finance API and CLI do, one function per use case, each in one transaction."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import asyncpg

from services.finance import domain
from services.finance import repository as repo
from services.finance.domain import Item, OrderPosition, RunTotals, Scope, Settlement, Tender, Tolerances
from services.finance.schemas import (
    CloseoutIn,
    CloseoutList,
    CloseoutOut,
    CloseoutQuery,
    Counts,
    ImportOut,
    ItemList,
    ItemOut,
    ItemQuery,
    PriceOverrideQuery,
    PriceOverrideReport,
    PriceOverrideRow,
    ResolutionIn,
    ResolutionOut,
    RevenueQuery,
    RevenueReport,
    RevenueRow,
    RunIn,
    RunList,
    RunOut,
    RunQuery,
    SettlementList,
    SettlementOut,
    SettlementQuery,
    TotalOut,
    VoidedRepeat,
    VoidOut,
)
from services.finance.settlement_file import Batch, RowErrors, SettlementFile
from shared.db import Connection, Pool, transaction
from shared.errors import Conflict, NotFound, field_error
from shared.idempotency import run_once
from shared.paging import decode_cursor, encode_cursor
from shared.settings import Settings

FIRST_ITEMS = 1000
Progress = Callable[[int], None]


def tolerances(settings: Settings) -> Tolerances:
    return Tolerances(amount=settings.finance_amount_tolerance, cash=settings.finance_cash_tolerance)


# --- imports ----------------------------------------------------------------------------------------


MAX_REPEATS = 1000


class _NothingNew(Exception):
    """Every row was imported before (or repeats a voided one): roll back, so a repeated file leaves no
    trace, and answer with what was found."""

    def __init__(self, result: ImportOut) -> None:
        self.result = result


@dataclass(frozen=True)
class ImportKey:
    """An Idempotency-Key claim on a streamed file: its fingerprint (a hash of the body) is known only
    once the body has been read, so the key is claimed after the COPY, in the same transaction."""

    scope: str
    key: str
    fingerprint: Callable[[], bytes]


@dataclass(frozen=True)
class Imported:
    status: int  # 201 with something new, else 200
    body: dict[str, Any]  # ImportOut, as JSON
    replayed: bool = False  # the stored answer of an earlier request with the same Idempotency-Key


async def import_settlements(pool: Pool, file: SettlementFile, batches: AsyncIterable[Batch], source: str,
                             actor: str, reimport_voided: bool = False, once: ImportKey | None = None) -> Imported:
    """All or nothing, in one transaction: the file's checked rows are COPYed into a staging table as
    they arrive (`batches`, from `file`); a bad row anywhere refuses the file (422, every bad row
    listed) and rolls back what was staged, as does a body refused on the way (413, 408, 400). Rows
    imported before are skipped (same values as the live row of their provider and external_id) or
    refused (other values); rows identical to a voided settlement are skipped unless `reimport_voided`."""
    try:
        async with transaction(pool) as conn:
            await repo.create_staging(conn)
            staged = 0

            async def copy_data() -> AsyncIterator[bytes]:
                nonlocal staged
                async for batch in batches:
                    staged += len(batch)
                    yield repo.staging_copy(batch)

            await repo.copy_staging(conn, copy_data())
            file.errors.raise_if_any()

            async def work() -> tuple[int, Any]:
                result = await _merge(conn, staged, file.errors, source, actor, reimport_voided)
                return (201, result.model_dump(mode="json"))

            if once is None:
                status, body = await work()
                return Imported(status, body)
            stored = await run_once(conn, once.scope, once.key, once.fingerprint(), work)
            return Imported(stored.status, stored.body, stored.replayed)
    except _NothingNew as nothing:
        return Imported(200, nothing.result.model_dump(mode="json"))


async def _merge(conn: Connection, staged: int, errors: RowErrors, source: str, actor: str,
                 reimport_voided: bool) -> ImportOut:
    """The staged file into finance.settlements (see import_settlements)."""
    if not staged:
        raise _NothingNew(ImportOut(batch_id=None, received=0, inserted=0, already_imported=0))
    batch_id, inserted, skipped, repeats, problems = await repo.import_staged(conn, staged, source, actor,
                                                                              reimport_voided)
    for row in problems:
        key = f"({row['provider']}, {row['external_id']})"
        if row["live_id"] is None:
            errors.add(row["line"], "external_id",
                       f"{key} was voided while this file was being imported; send the file again")
        elif row["this_file"]:
            errors.add(row["line"], "external_id", f"repeats line {row['first_line']} {key} with different values")
        else:
            errors.add(row["line"], "external_id",
                       f"{key} was imported before with other values (settlement {row['live_id']});"
                       " void that settlement to import these")
    errors.raise_if_any()
    received = staged - repeats
    repeated_voided = [VoidedRepeat(**dict(r)) for r in await repo.voided_repeats(conn, MAX_REPEATS)] if skipped else []
    result = ImportOut(batch_id=batch_id, received=received, inserted=inserted,
                       already_imported=received - inserted - skipped, skipped_voided=skipped,
                       voided_repeats=repeated_voided)
    if inserted == 0:
        raise _NothingNew(result.model_copy(update={"batch_id": None}))
    return result


# --- voids ---------------------------------------------------------------------------------------------


async def void_settlement(conn: Connection, target: int | tuple[str, str], reason: str, actor: str) -> VoidOut:
    """Void a settlement (by id, or the live one of a (provider, external_id)): it stays, with when, who
    and why, and no run counts it any more.

    A settlement a committed run counted is refused: its sales are on the ledger, which is never
    rewritten. Each uncommitted run that may count it has its commit lock taken first (the one
    ledger_commit holds while it writes), so a commit under way finishes before this decides, and a
    commit that starts later sees the void and refuses the run as stale (ledger_commit.commit_run)."""
    row = await _locked_settlement(conn, target)
    sid = int(row["id"])
    if row["voided_at"] is not None:
        raise domain.SettlementVoided(f"settlement {sid} was voided at {row['voided_at'].isoformat()} by "
                                      f"{row['voided_by']}: {row['void_reason']}")
    candidates = await repo.runs_that_may_count(conn, sid, row["order_id"], row["settled_at"])
    for run in candidates:
        if run["committed_at"] is None:
            await repo.lock_run_commit_xact(conn, run["id"])
    counting = await repo.runs_counting(conn, sid, [r["id"] for r in candidates])
    on_ledger = [r["id"] for r in counting if r["on_ledger"]]
    if on_ledger:
        raise domain.SettlementCommitted(
            f"settlement {sid} is on the ledger through committed run(s) {', '.join(map(str, on_ledger))}; "
            "the ledger is never rewritten, so the settlement stays", runs=on_ledger)
    voided = await repo.mark_voided(conn, sid, actor, reason)
    return VoidOut(**dict(voided), stale_runs=[r["id"] for r in counting if r["superseded_by"] is None])


async def _locked_settlement(conn: Connection, target: int | tuple[str, str]) -> asyncpg.Record:
    if isinstance(target, int):
        row = await repo.lock_settlement(conn, target)
        if row is None:
            raise NotFound(f"unknown settlement {target}")
        return row
    provider, external_id = target
    row = await repo.lock_live_settlement(conn, provider, external_id)
    if row is not None:
        return row
    voided = await repo.last_voided(conn, provider, external_id)
    if voided is None:
        raise NotFound(f"no settlement ({provider}, {external_id})")
    return voided


# --- lists (keyset cursors, shared.paging) ---------------------------------------------------------------


def _after(cursor: str | None, after: int, list_name: str) -> int:
    """The key a page starts after: from the cursor, or from the older `after` parameter."""
    if cursor is None:
        return after
    if after:
        raise field_error("after", "send cursor or after, not both")
    (key,) = decode_cursor(list_name, cursor, (int,))
    return int(key)


async def list_settlements(pool: Pool, q: SettlementQuery) -> SettlementList:
    after = _after(q.cursor, q.after, "settlements")
    rows = await repo.list_settlements(pool, q.order_id, q.status, after, q.limit + 1)
    items = [SettlementOut.model_validate(dict(r)) for r in rows[:q.limit]]
    if len(rows) <= q.limit:
        return SettlementList(items=items)
    last = items[-1].id
    return SettlementList(items=items, next_cursor=encode_cursor("settlements", [last]), next_after=last)


async def list_closeouts(pool: Pool, q: CloseoutQuery) -> CloseoutList:
    after_location = None
    if q.cursor is not None:
        day, after_location = decode_cursor("closeouts", q.cursor, (date, str))
        if day != q.business_day:
            raise field_error("cursor", f"a cursor of business day {day}, not {q.business_day}")
    rows = await repo.closeout_page(pool, q.business_day, q.location_id, after_location, q.limit + 1)
    items = [CloseoutOut.model_validate(dict(r)) for r in rows[:q.limit]]
    more = len(rows) > q.limit
    return CloseoutList(items=items, next_cursor=encode_cursor("closeouts", [q.business_day, items[-1].location_id])
                        if more else None)


async def list_runs(pool: Pool, q: RunQuery) -> RunList:
    before = None if q.cursor is None else int(decode_cursor("runs", q.cursor, (int,))[0])
    rows = await repo.list_runs(pool, q.business_day, before, q.limit + 1)
    items = [run_out(r, []) for r in rows[:q.limit]]
    return RunList(items=items, next_cursor=encode_cursor("runs", [items[-1].id]) if len(rows) > q.limit else None)


# --- close-outs ---------------------------------------------------------------------------------------


async def declare_closeout(pool: Pool, body: CloseoutIn, actor: str) -> CloseoutOut:
    async with transaction(pool) as conn:
        if not await repo.location_exists(conn, body.location_id):
            raise field_error("location_id", f"unknown location '{body.location_id}'")
        row = await repo.insert_closeout(conn, body.location_id, body.business_day, body.currency,
                                         [t.model_dump(mode="json") for t in body.tenders], body.note, actor)
    return CloseoutOut.model_validate(dict(row))


# --- reconciliation runs -------------------------------------------------------------------------------


def _position(row: asyncpg.Record) -> OrderPosition:
    order_id, channel, location_id, currency, paid_at_till, sales_total, sells, returns, sold, returned, \
        sale_ids, captures, capture_ids, refunds, refund_ids, currencies = row
    return OrderPosition(str(order_id), channel, location_id, currency, paid_at_till, sales_total, sells, returns,
                         sold, returned, captures or (), refunds or (), frozenset(currencies or ()), sale_ids,
                         capture_ids or (), refund_ids or ())


def _tenders(raw: Any) -> tuple[Tender, ...]:
    return tuple(Tender(t["kind"], Decimal(str(t["amount"]))) for t in raw or ())


async def _other_items(reader: Connection, scope: Scope, tol: Tolerances) -> list[Item]:
    """Settlements no sale accounts for, then the stores' tenders against their close-outs."""
    rows = await repo.stray_settlements(reader, scope)
    strays = [Settlement(r["id"], r["order_ref"], r["order_id"], r["type"], r["amount"], r["currency"],
                         r["settled_at"], r["fee"]) for r in rows]
    channels = {r["order_id"]: r["channel"] for r in rows if r["order_id"] and r["channel"]}
    items = domain.strays(scope, [], strays, channels)
    if not scope.checks_tills:
        return items
    totals = domain.TillTotals()
    for r in await repo.till_tenders(reader, scope):
        totals.expected[(r["location_id"], r["kind"], r["currency"])] += r["amount"]
    for r in await repo.till_returns(reader, scope):
        totals.add_return(r["location_id"], r["currency"], r["total"], _tenders(r["original"]))
    closeouts = [domain.Closeout(r["location_id"], r["currency"], _tenders(r["tenders"]))
                 for r in await repo.latest_closeouts(reader, scope.business_day, scope.location_id)]
    return items + domain.tender_items(totals, closeouts, tol)


COPY_CHUNK = 5000


async def run_reconciliation(pool: Pool, body: RunIn, actor: str, tol: Tolerances,
                             on_total: Progress | None = None, on_progress: Progress | None = None) -> RunOut:
    """Reconcile one business day (optionally one channel or location) into a new, immutable run.

    Orders are aggregated in SQL and streamed through the pure rules in domain.py into a COPY, so a
    million orders never sit in memory at once as objects: one connection reads (one snapshot), the
    other writes the run in one transaction while the rows are still being classified. The run's
    items_root is the RFC 9162 Merkle root over the items' COPY lines (repository.item_line), in
    item order: anyone holding the items can recompute it.
    """
    scope = Scope(body.business_day, body.channel, body.location_id)
    async with transaction(pool) as conn:
        await repo.resolve_pending_settlements(conn)
    async with transaction(pool) as writer, pool.acquire() as reader, \
            reader.transaction(isolation="repeatable_read", readonly=True):
        await repo.lock_scope(writer, scope)
        await repo.prepare_reader(reader)
        if on_total is not None:
            on_total(await repo.count_scope_orders(reader, scope))
        run_id = await repo.next_run_id(writer)
        totals, leaves = RunTotals(), []

        def emit(item_no: int, item: Item) -> str:
            totals.add(item)
            line = repo.item_line(run_id, item_no, item)
            leaves.append(domain.leaf(line.encode()))
            return line

        async def chunks() -> AsyncIterator[bytes]:
            item_no, lines = 0, []
            async for row in repo.positions(reader, scope):
                item_no += 1
                lines.append(emit(item_no, domain.classify(_position(row), tol)))
                if len(lines) == COPY_CHUNK:
                    yield "".join(lines).encode()
                    lines.clear()
                    if on_progress is not None:
                        on_progress(COPY_CHUNK)
            if on_progress is not None:
                on_progress(len(lines))
            for item in await _other_items(reader, scope, tol):
                item_no += 1
                lines.append(emit(item_no, item))
            if lines:
                yield "".join(lines).encode()

        await repo.copy_items(writer, chunks())
        previous = await repo.supersede(writer, scope, run_id)
        await repo.insert_run(
            writer, id=run_id, business_day=scope.business_day, channel=scope.channel,
            location_id=scope.location_id, amount_tolerance=tol.amount, cash_tolerance=tol.cash,
            counts=totals.count_dict(), totals=totals.total_list(), item_count=len(leaves),
            items_root=domain.merkle_root(leaves).hex(), created_by=actor, supersedes=previous)
    return await get_run(pool, run_id)


def _status(run: asyncpg.Record) -> str:
    if run["superseded_by"] is not None:
        return "superseded"
    if run["committed_at"] is not None:
        return "committed"
    return "reconciled" if unresolved_count(run) == 0 else "open"


def unresolved_count(run: asyncpg.Record) -> int:
    return int(run["item_count"] - run["counts"]["matched"] - run["resolved"])


def item_out(row: asyncpg.Record) -> ItemOut:
    resolution = None
    if row["action"] is not None:
        resolution = ResolutionOut(action=row["action"], reason=row["reason"], amount=row["amount"],
                                   settlement_id=row["settlement_id"], resolved_by=row["resolved_by"],
                                   resolved_at=row["resolved_at"])
    return ItemOut(
        item_no=row["item_no"], kind=row["kind"], class_=row["class"],
        order_id=str(row["order_id"]) if row["order_id"] else None, order_ref=row["order_ref"],
        channel=row["channel"], location_id=row["location_id"], tender=row["tender"], currency=row["currency"],
        sales_total=row["sales_total"], expected=row["expected"], paid=row["paid"], difference=row["difference"],
        sale_ids=list(row["sale_ids"]), settlement_ids=list(row["settlement_ids"]), note=row["note"],
        resolution=resolution)


def run_out(run: asyncpg.Record, items: list[asyncpg.Record]) -> RunOut:
    return RunOut(
        id=run["id"], status=_status(run), business_day=run["business_day"], channel=run["channel"],
        location_id=run["location_id"], counts=Counts(**run["counts"]),
        totals=[TotalOut(**t) for t in run["totals"]], unresolved=unresolved_count(run), item_count=run["item_count"],
        items_root=run["items_root"], amount_tolerance=run["amount_tolerance"],
        cash_tolerance=run["cash_tolerance"], created_by=run["created_by"], created_at=run["created_at"],
        supersedes=run["supersedes"], superseded_by=run["superseded_by"], committed_at=run["committed_at"],
        committed_by=run["committed_by"], override_reason=run["override_reason"],
        items=[item_out(i) for i in items], items_truncated=run["item_count"] > len(items),
    )


async def get_run(db: Pool | Connection, run_id: int, first_items: int = FIRST_ITEMS) -> RunOut:
    run = await repo.get_run(db, run_id)
    if run is None:
        raise NotFound(f"unknown reconciliation run {run_id}")
    items = await repo.first_items(db, run_id, first_items) if first_items else []
    return run_out(run, items)


async def list_items(pool: Pool, run_id: int, q: ItemQuery) -> ItemList:
    if await repo.get_run(pool, run_id) is None:
        raise NotFound(f"unknown reconciliation run {run_id}")
    after = q.after
    if q.cursor is not None:
        if q.after:
            raise field_error("after", "send cursor or after, not both")
        of_run, after = decode_cursor("run_items", q.cursor, (int, int))
        if of_run != run_id:
            raise field_error("cursor", f"a cursor of run {of_run}, not of run {run_id}")
    rows = await repo.list_items(pool, run_id, q.class_, after, q.limit + 1)
    items = [item_out(r) for r in rows[:q.limit]]
    if len(rows) <= q.limit:
        return ItemList(items=items)
    last = items[-1].item_no
    return ItemList(items=items, next_cursor=encode_cursor("run_items", [run_id, last]), next_after=last)


async def _open_run(conn: Connection, run_id: int) -> asyncpg.Record:
    """The run, locked; a superseded or committed run takes no more resolutions."""
    run = await repo.get_run(conn, run_id, lock=True)
    if run is None:
        raise NotFound(f"unknown reconciliation run {run_id}")
    if run["superseded_by"] is not None:
        raise domain.RunSuperseded(f"run {run_id} was superseded by run {run['superseded_by']}")
    return run


async def resolve_item(pool: Pool, run_id: int, item_no: int, body: ResolutionIn, actor: str) -> ItemOut:
    async with transaction(pool) as conn:
        run = await _open_run(conn, run_id)
        if run["committed_at"] is not None:
            raise domain.RunCommitted(f"run {run_id} is committed; resolve in a new run")
        item = await repo.get_item(conn, run_id, item_no)
        if item is None:
            raise NotFound(f"run {run_id} has no item {item_no}")
        if item["class"] == domain.MATCHED:
            raise Conflict(f"item {item_no} is matched; there is nothing to resolve")
        if body.settlement_id is not None and not await repo.live_settlement_exists(conn, body.settlement_id):
            raise field_error("settlement_id", f"unknown or voided settlement {body.settlement_id}")
        if not await repo.insert_resolution(conn, run_id, item_no, body.action, body.reason, body.amount,
                                            body.settlement_id, actor):
            raise Conflict(f"item {item_no} of run {run_id} is resolved already")
        return item_out(await repo.get_item(conn, run_id, item_no))  # type: ignore[arg-type]


# --- reports -------------------------------------------------------------------------------------------


def average(gross: Decimal, orders: int) -> Decimal:
    if not orders:
        return Decimal("0.00")
    return (gross / orders).quantize(domain.CENT, rounding=ROUND_HALF_EVEN)


async def revenue_report(pool: Pool, query: RevenueQuery) -> RevenueReport:
    rows = await repo.revenue(pool, query.from_, query.to, query.group_by)
    return RevenueReport(from_=query.from_, to=query.to, group_by=query.group_by, rows=[
        RevenueRow(key=r["key"], currency=r["currency"], orders=r["orders"], gross=r["gross"], returns=r["returns"],
                   revenue=r["revenue"], average_order_value=average(r["gross"], r["orders"])) for r in rows])


def revenue_csv(report: RevenueReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.group_by, "currency", "orders", "gross", "returns", "revenue", "average_order_value"])
    for r in report.rows:
        writer.writerow([r.key, r.currency, r.orders, f"{r.gross:.2f}", f"{r.returns:.2f}", f"{r.revenue:.2f}",
                         f"{r.average_order_value:.2f}"])
    return out.getvalue()


class FinanceRevenue:
    """Finance's revenue per day, channel, location and currency: what the ledger's revenue audit
    compares its verified reconciled sales with (ledger.revenue.FinanceRevenueSource)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def revenue_groups(self, date_from: str, date_to: str) -> list[dict[str, Any]]:
        rows = await repo.revenue_groups(self._pool, date.fromisoformat(date_from), date.fromisoformat(date_to))
        return [{"business_day": r["business_day"].isoformat(), "channel": r["channel"],
                 "location_id": r["location_id"], "currency": r["currency"], "sales": r["sales"],
                 "amount": f"{r['amount']:.2f}"} for r in rows]


async def price_override_report(pool: Pool, query: PriceOverrideQuery) -> PriceOverrideReport:
    """Sales lines sold at an overridden price (and, asked for, at an online channel's own price)."""
    after = decode_cursor("price-overrides", query.cursor, (int, int)) if query.cursor else (0, 0)
    sources = ["override", "channel"] if query.include_channel else ["override"]
    rows = await repo.price_overrides(pool, query.from_, query.to, query.location_id, sources, after, query.limit)
    items = [PriceOverrideRow(**{k: v for k, v in dict(r).items() if k != "line_no"},
                              difference=(r["unit_price"] - r["catalogue_price"]) * r["qty"]) for r in rows]
    last = rows[-1] if len(rows) == query.limit else None
    return PriceOverrideReport(items=items, next_cursor=encode_cursor("price-overrides", [last["sale_id"],
                                                                                         last["line_no"]])
                               if last else None)
