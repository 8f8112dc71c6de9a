"""Finance pages: settlement upload (streamed through), close-outs, reconciliation runs and their
workbench, the revenue report with its chart and CSV. Every number comes from the finance API as it
sent it (decimal strings); the console decides nothing about money."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from aiohttp import BodyPartReader, MultipartReader, web
from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator

from services.console.upstream import Reply
from services.console.web import (
    AREAS,
    MULTIPART,
    Session,
    form_data,
    page,
    parse_form,
    redirect,
    refused,
    render,
    upstream,
)
from shared.errors import Problem

routes = web.RouteTableDef()
FINANCE = AREAS["finance"]
CLASSES = ("amount_mismatch", "missing_payment", "missing_sale", "duplicate", "matched")
ACTIONS = (("write_off", "Write off the difference"), ("adjustment", "Book an adjustment"),
           ("linked_settlement", "Link a later settlement"))
# What a file's name says it is; the finance API reads these three streamed.
SUFFIX_TYPES = {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson"}
STREAMED_TYPES = frozenset({"text/csv", "application/x-ndjson", "application/jsonl"})
CHUNK = 64 * 1024
ITEMS_PER_PAGE = 50
TENDERS = ("cash", "card")
Reason = Annotated[str, StringConstraints(min_length=1, max_length=500)]
LocationField = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


def _money(value: str | None, *, signed: bool) -> str | None:
    """A decimal string of at most 2 places (the API's own rule; checked here so a typo changes nothing)."""
    if value is None:
        return None
    try:
        amount = Decimal(value.replace(",", ""))
    except InvalidOperation:
        raise ValueError("an amount such as 12.30") from None
    if not amount.is_finite() or amount.as_tuple().exponent < -2:  # type: ignore[operator]
        raise ValueError("an amount with at most 2 decimal places")
    if not signed and amount < 0:
        raise ValueError("an amount of 0 or more")
    if abs(amount) >= Decimal("1e12"):
        raise ValueError("an amount below 1,000,000,000,000")
    return str(amount)


class Form(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _filled_in(cls, value: object, info: ValidationInfo) -> object:
        """A blank required field says so (parse_form makes a blank field None), not "not a string"."""
        if value is None and info.field_name and cls.model_fields[info.field_name].is_required():
            raise ValueError("required: fill this in")
        return value


class RunForm(Form):
    business_day: date
    channel: Literal["online", "store"] | None = None
    location_id: LocationField | None = None


class ResolveForm(Form):
    action: Literal["write_off", "adjustment", "linked_settlement"]
    reason: Reason
    amount: str | None = None
    settlement_id: Annotated[int, Field(ge=1, le=2**62)] | None = None

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: str | None) -> str | None:
        return _money(value, signed=True)


class CommitForm(Form):
    override_reason: Reason | None = None


class CloseoutForm(Form):
    location_id: LocationField
    business_day: date
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    cash: str | None = None
    card: str | None = None
    note: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("cash", "card")
    @classmethod
    def _tender(cls, value: str | None) -> str | None:
        return _money(value, signed=False)


class RevenueForm(Form):
    from_: date = Field(alias="from")
    to: date
    group_by: Literal["day", "channel", "location"] = "day"


def refused_form(request: web.Request, template: str, values: dict[str, Any], reply: Reply, block: str,
                 fields: tuple[str, ...]) -> web.Response:
    """The API's refusal on the form: each error beside its field, and one about no field of the form (a
    rule across fields, say) in the problem box with the API's detail, so none goes unshown."""
    response = refused(request, template, values, reply, block=block)
    elsewhere = {k: v for k, v in reply.field_errors().items() if k not in fields and "." not in k}
    if not elsewhere:
        return response
    problem = "; ".join([reply.detail, *(v.removeprefix("Value error, ") for v in elsewhere.values())])
    errors = {k: v for k, v in reply.field_errors().items() if k in fields}
    return render(request, template, {**values, "errors": errors, "problem": problem}, status=response.status,
                  block=block)


# --- settlements and close-outs -------------------------------------------------------------------


def _upload_values(**extra: Any) -> dict[str, Any]:
    return {"summary": None, "row_errors": [], "closeout": None, **extra}


@routes.get("/finance")
@page(*FINANCE)
async def finance_home(request: web.Request, session: Session) -> web.StreamResponse:
    """Upload a settlement file; declare a store's close-out."""
    return render(request, "finance/upload.html", _upload_values(
        form={"business_day": date.today().isoformat(), "currency": "EUR"}))


def _import_result(request: web.Request, reply: Reply) -> web.Response:
    values = _upload_values()
    if reply.ok:
        values["summary"] = reply.body
        status = 200
    else:
        body = reply.body if isinstance(reply.body, dict) else {}
        values["row_errors"] = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        values["problem"] = reply.detail
        status = reply.status if 400 <= reply.status < 500 else 503
    return render(request, "finance/upload.html", values, status=status, block="result")


async def _file_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


def _refuse_file(request: web.Request, message: str, status: int = 422) -> web.Response:
    return render(request, "finance/upload.html", _upload_values(errors={"file": message}, problem=message),
                  status=status, block="result")


@routes.post("/finance/settlements")
@page(*FINANCE)
async def upload_settlements(request: web.Request, session: Session) -> web.StreamResponse:
    """The file goes through to finance as it arrives: the raw body from the page's script, or the
    file part of a plain form. Nothing is held whole here; the API checks every row."""
    client = upstream(request)
    if request.content_type in STREAMED_TYPES:
        reply = await client.call("finance", "POST", "/v1/settlements", key=session.key, data=request.content,
                                  content_type=request.content_type, long=True)
        return _import_result(request, reply)
    reader = request.get(MULTIPART)  # the token came as the form's first part
    if reader is None and request.content_type == "multipart/form-data":
        reader = await request.multipart()  # the token came as a header (a script's multipart post)
    if not isinstance(reader, MultipartReader):
        return _refuse_file(request, "send a CSV or JSON lines file", status=415)
    part = await reader.next()
    while isinstance(part, BodyPartReader) and part.name != "file":
        await part.release()
        part = await reader.next()
    if not isinstance(part, BodyPartReader) or not part.filename:
        return _refuse_file(request, "choose a file to upload")
    suffix = "." + part.filename.rsplit(".", 1)[-1].lower() if "." in part.filename else ""
    ctype = SUFFIX_TYPES.get(suffix)
    if ctype is None:
        return _refuse_file(request, "the file's name must end in .csv, .jsonl or .ndjson", status=415)
    reply = await client.call("finance", "POST", "/v1/settlements", key=session.key, data=_file_chunks(part),
                              content_type=ctype, long=True)
    return _import_result(request, reply)


@routes.post("/finance/closeouts")
@page(*FINANCE)
async def declare_closeout(request: web.Request, session: Session) -> web.StreamResponse:
    """A store's declared end-of-day totals per tender."""
    form, errors, values = await parse_form(request, CloseoutForm)
    if form is not None and form.cash is None and form.card is None:
        errors = {"cash": "at least one tender's amount"}
    if form is None or errors:
        return render(request, "finance/upload.html", _upload_values(form=values, errors=errors), status=422,
                      block="closeout")
    body: dict[str, Any] = {
        "location_id": form.location_id, "business_day": form.business_day.isoformat(), "currency": form.currency,
        "tenders": [{"kind": kind, "amount": getattr(form, kind)} for kind in TENDERS
                    if getattr(form, kind) is not None]}
    if form.note:
        body["note"] = form.note
    raw = await form_data(request)
    reply = await upstream(request).call("finance", "POST", "/v1/closeouts", key=session.key, json_body=body,
                                         idempotency_key=raw.get("idem"))
    if not reply.ok:
        return refused_form(request, "finance/upload.html", _upload_values(form=values), reply, "closeout",
                            tuple(CloseoutForm.model_fields))
    return render(request, "finance/upload.html", _upload_values(form=values, closeout=reply.body),
                  block="closeout")


# --- runs -----------------------------------------------------------------------------------------


async def _runs(request: web.Request, session: Session) -> tuple[list[dict[str, Any]], str | None, str | None]:
    params = {"limit": "50"}
    if cursor := request.query.get("cursor"):
        params["cursor"] = cursor[:500]
    reply = await upstream(request).call("finance", "GET", "/v1/reconciliations", key=session.key, params=params)
    if not reply.ok:
        return [], None, reply.detail
    return reply.body["items"], reply.body.get("next_cursor"), None


@routes.get("/finance/runs")
@page(*FINANCE)
async def runs_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Run a business day; the runs so far, newest first."""
    runs, next_cursor, problem = await _runs(request, session)
    return render(request, "finance/runs.html", {"runs": runs, "next_cursor": next_cursor, "problem": problem,
                                                 "form": {"business_day": date.today().isoformat()}})


@routes.post("/finance/runs")
@page(*FINANCE)
async def start_run(request: web.Request, session: Session) -> web.StreamResponse:
    form, errors, values = await parse_form(request, RunForm)
    if form is None:
        runs, next_cursor, _ = await _runs(request, session)
        return render(request, "finance/runs.html", {"runs": runs, "next_cursor": next_cursor, "form": values,
                                                     "errors": errors}, status=422)
    reply = await upstream(request).call("finance", "POST", "/v1/reconciliations", key=session.key, long=True,
                                         json_body=form.model_dump(mode="json", exclude_none=True))
    if not reply.ok:
        runs, next_cursor, _ = await _runs(request, session)
        ctx = {"runs": runs, "next_cursor": next_cursor, "form": values}
        return refused_form(request, "finance/runs.html", ctx, reply, "content", tuple(RunForm.model_fields))
    return redirect(request, f"/finance/runs/{reply.body['id']}")


def _run_id(request: web.Request) -> int:
    text = request.match_info["run_id"]
    if not text.isdigit() or len(text) > 18:
        raise web.HTTPNotFound(reason="no such run")
    return int(text)


async def _payments(request: web.Request, session: Session, items: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """Each order item's settlements, beside its sale (one call per order on the page, side by side)."""
    client = upstream(request)
    orders = [i for i in items if i.get("order_id")]

    async def of(item: dict[str, Any]) -> list[Any]:
        reply = await client.call("finance", "GET", "/v1/settlements", key=session.key,
                                  params={"order_id": item["order_id"], "status": "live", "limit": "20"})
        return reply.body["items"] if reply.ok else []

    found = await asyncio.gather(*(of(i) for i in orders))
    return {i["item_no"]: f for i, f in zip(orders, found, strict=True)}


async def _workbench(request: web.Request, session: Session, run_id: int, **extra: Any) -> dict[str, Any]:
    client = upstream(request)
    run = await client.call("finance", "GET", f"/v1/reconciliations/{run_id}", key=session.key)
    if not run.ok:
        raise web.HTTPNotFound(reason=run.detail) if run.status == 404 else web.HTTPForbidden(reason=run.detail)
    cls = request.query.get("class")
    cls = cls if cls in CLASSES else None
    params = {"limit": str(ITEMS_PER_PAGE), **({"class": cls} if cls else {})}
    if cursor := request.query.get("cursor"):
        params["cursor"] = cursor[:500]
    items = await client.call("finance", "GET", f"/v1/reconciliations/{run_id}/items", key=session.key,
                              params=params)
    listed = items.body["items"] if items.ok else []
    return {"run": run.body, "items": listed, "next_cursor": items.body.get("next_cursor") if items.ok else None,
            "cls": cls, "classes": CLASSES, "payments": await _payments(request, session, listed),
            "problem": None if items.ok else items.detail, **extra}


@routes.get("/finance/runs/{run_id}")
@page(*FINANCE)
async def workbench(request: web.Request, session: Session) -> web.StreamResponse:
    """A run: counts per class, its items (filtered by class), each sale beside its payments, commit."""
    values = await _workbench(request, session, _run_id(request))
    return render(request, "finance/run.html", values, block="items")


@routes.post("/finance/runs/{run_id}/commit")
@page(*FINANCE)
async def commit_run(request: web.Request, session: Session) -> web.StreamResponse:
    run_id = _run_id(request)
    form, errors, values = await parse_form(request, CommitForm)
    if form is None:
        return render(request, "finance/run.html", await _workbench(request, session, run_id, form=values,
                                                                    errors=errors), status=422, block="commit")
    body = {"override_reason": form.override_reason} if form.override_reason else {}
    reply = await upstream(request).call("finance", "POST", f"/v1/reconciliations/{run_id}/commit",
                                         key=session.key, json_body=body, long=True)
    if not reply.ok:
        ctx = await _workbench(request, session, run_id, form=values)
        response = refused(request, "finance/run.html", ctx, reply, block="commit")
        if reply.status == 409 and isinstance(reply.body, dict) and \
                str(reply.body.get("type", "")).endswith("/unresolved-items"):
            # The one refusal a person answers in the form: resolve the items, or say why not.
            ctx = {**ctx, "errors": {"override_reason": reply.detail}, "problem": reply.detail}
            return render(request, "finance/run.html", ctx, status=409, block="commit")
        return response
    return redirect(request, f"/finance/runs/{run_id}")


# --- one item: its sale, its payments, its resolution ------------------------------------------------


def _item_no(request: web.Request) -> int:
    text = request.match_info["item_no"]
    if not text.isdigit() or len(text) > 9:
        raise web.HTTPNotFound(reason="no such item")
    return int(text)


async def _item(request: web.Request, session: Session, run_id: int, item_no: int, **extra: Any) -> dict[str, Any]:
    client = upstream(request)
    reply = await client.call("finance", "GET", f"/v1/reconciliations/{run_id}/items", key=session.key,
                              params={"after": str(item_no - 1), "limit": "1"})
    found = [i for i in reply.body["items"] if i["item_no"] == item_no] if reply.ok else []
    if not found:
        raise web.HTTPNotFound(reason=reply.detail if not reply.ok else "no such item in this run")
    item = found[0]
    order = None
    if item.get("order_id"):
        got = await client.call("orders", "GET", f"/v1/orders/{item['order_id']}", key=session.key)
        order = got.body if got.ok else None
    payments = await _payments(request, session, [item])
    return {"run_id": run_id, "item": item, "order": order, "payments": payments.get(item_no, []),
            "actions": ACTIONS, **extra}


@routes.get("/finance/runs/{run_id}/items/{item_no}")
@page(*FINANCE)
async def item_page(request: web.Request, session: Session) -> web.StreamResponse:
    values = await _item(request, session, _run_id(request), _item_no(request), form={"action": "write_off"})
    return render(request, "finance/item.html", values)


@routes.post("/finance/runs/{run_id}/items/{item_no}/resolution")
@page(*FINANCE)
async def resolve_item(request: web.Request, session: Session) -> web.StreamResponse:
    """Resolve with a reason; a bad field is shown beside it and nothing is sent."""
    run_id, item_no = _run_id(request), _item_no(request)
    form, errors, values = await parse_form(request, ResolveForm)
    if form is None:
        ctx = await _item(request, session, run_id, item_no, form=values, errors=errors)
        return render(request, "finance/item.html", ctx, status=422, block="resolve")
    raw = await form_data(request)
    reply = await upstream(request).call(
        "finance", "POST", f"/v1/reconciliations/{run_id}/items/{item_no}/resolution", key=session.key,
        json_body=form.model_dump(exclude_none=True), idempotency_key=raw.get("idem"))
    if not reply.ok:
        ctx = await _item(request, session, run_id, item_no, form=values)
        return refused_form(request, "finance/item.html", ctx, reply, "resolve", tuple(ResolveForm.model_fields))
    return redirect(request, f"/finance/runs/{run_id}")


# --- revenue --------------------------------------------------------------------------------------


def _chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Bar lengths for the server-drawn SVG chart: each row's revenue against the largest of its currency
    (a negative day, all returns, draws no bar; the table has its number)."""
    widest: dict[str, Decimal] = {}
    for row in rows:
        widest[row["currency"]] = max(widest.get(row["currency"], Decimal(0)), Decimal(row["revenue"]))
    bars = []
    for n, row in enumerate(rows):
        top, value = widest[row["currency"]], Decimal(row["revenue"])
        width = int(value / top * 100) if top > 0 and value > 0 else 0
        bars.append({"y": n * 28, "width": width, "label": row["key"],
                     "value": f"{row['revenue']} {row['currency']}"})
    return {"bars": bars, "height": max(len(rows) * 28, 28)}


def _revenue_query(request: web.Request) -> tuple[RevenueForm | None, dict[str, str], dict[str, str]]:
    today = datetime.now(UTC).date()
    values = {"from": request.query.get("from") or (today - timedelta(days=6)).isoformat(),
              "to": request.query.get("to") or today.isoformat(),
              "group_by": request.query.get("group_by") or "day"}
    try:
        return RevenueForm.model_validate(values), {}, values
    except ValueError as exc:
        errors: dict[str, str] = {}
        for error in getattr(exc, "errors", list)():
            name = str(error["loc"][0]) if error["loc"] else "form"
            errors.setdefault("from" if name == "from_" else name, error["msg"].removeprefix("Value error, "))
        return None, errors or {"from": "a date as YYYY-MM-DD"}, values


def _api_params(form: RevenueForm) -> dict[str, str]:
    return {"from": form.from_.isoformat(), "to": form.to.isoformat(), "group_by": form.group_by}


@routes.get("/finance/revenue")
@page(*FINANCE)
async def revenue_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Revenue by day, channel or location: a table, a bar chart, and the same as CSV."""
    form, errors, values = _revenue_query(request)
    ctx: dict[str, Any] = {"form": values, "errors": errors, "rows": [], "chart": _chart([]), "csv": None}
    if form is None:
        return render(request, "finance/revenue.html", ctx, status=422, block="report")
    if form.to < form.from_:
        ctx["errors"] = {"to": "'to' is before 'from'"}
        return render(request, "finance/revenue.html", ctx, status=422, block="report")
    reply = await upstream(request).call("finance", "GET", "/v1/reports/revenue", key=session.key,
                                         params=_api_params(form), long=True)
    if not reply.ok:
        return refused(request, "finance/revenue.html", ctx, reply, block="report")
    rows = reply.body["rows"]
    query = "&".join(f"{k}={v}" for k, v in _api_params(form).items())
    return render(request, "finance/revenue.html", {**ctx, "rows": rows, "chart": _chart(rows),
                                                    "csv": f"/finance/revenue.csv?{query}"}, block="report")


@routes.get("/finance/revenue.csv")
@page(*FINANCE)
async def revenue_csv(request: web.Request, session: Session) -> web.StreamResponse:
    """The API's own CSV, passed on as it is: the same decimal strings, never re-computed here."""
    form, errors, _ = _revenue_query(request)
    if form is None or form.to < form.from_:
        raise _problem(422, "; ".join(f"{k}: {v}" for k, v in errors.items()) or "'to' is before 'from'")
    reply = await upstream(request).call("finance", "GET", "/v1/reports/revenue.csv", key=session.key,
                                         params=_api_params(form), long=True)
    if not reply.ok:
        raise _problem(reply.status if 400 <= reply.status < 500 else 503, reply.detail)
    name = f"revenue-{form.group_by}-{form.from_}-{form.to}.csv"
    return web.Response(text=str(reply.body), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _problem(status: int, detail: str) -> Problem:
    problem = Problem(detail)
    problem.status = status
    return problem
