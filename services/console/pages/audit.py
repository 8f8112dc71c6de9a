"""The auditor's pages: the latest checkpoint, entries found by sequence number, order id or entry key
with their inclusion proofs, consistency between two tree sizes, the revenue audit against finance's
report, and export bundles. Every proof and signature a page shows is checked again in the auditor's
browser (static/verify.js, static/audit.js) against certificates from the auditor's own trust folder:
the page hands over the ledger's answer as data, never a verdict."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from services.console.web import AREAS, Session, page, redirect, render, upstream
from shared.errors import Forbidden, NotFound, ServiceUnavailable

routes = web.RouteTableDef()
AUDIT = AREAS["audit"]
MAX_QUERY = 200


def whole(text: str) -> bool:
    """ASCII digits only: str.isdigit() also says yes to '²' and other scripts' digits, which int() refuses."""
    return text.isascii() and text.isdigit()


@routes.get("/audit")
@page(*AUDIT)
async def checkpoint(request: web.Request, session: Session) -> web.StreamResponse:
    """The latest checkpoint: tree size, root, each organisation's signature, who has yet to sign."""
    reply = await upstream(request).call("ledger", "GET", "/v1/ledger/checkpoint", key=session.key)
    latest = reply.body if reply.ok else None
    problem = None if reply.ok or reply.status == 404 else reply.detail
    return render(request, "audit/checkpoint.html", {"checkpoint": latest, "problem": problem})


@routes.get("/audit/find")
@page(*AUDIT)
async def find(request: web.Request, session: Session) -> web.StreamResponse:
    """One box: a sequence number opens that entry; anything else is looked up as an order id, then as
    an entry key."""
    q = request.query.get("q", "").strip()
    values: dict[str, Any] = {"form": {"q": q}, "found": None}
    if not q:
        return render(request, "audit/find.html", values)
    if len(q) > MAX_QUERY or any(ch.isspace() or not ch.isprintable() for ch in q):
        error = "a sequence number, an order id or an entry key, without spaces"
        return render(request, "audit/find.html", {**values, "errors": {"q": error}}, status=422)
    if whole(q) and len(q) <= 18:
        return redirect(request, f"/audit/entries/{int(q)}")
    client = upstream(request)
    found: list[dict[str, Any]] = []
    if ":" not in q:
        by_order = await client.call("ledger", "GET", "/v1/ledger/entries", key=session.key, params={"order_id": q})
        if not by_order.ok:
            return render(request, "audit/find.html", {**values, "problem": by_order.detail}, status=by_order.status)
        found = by_order.body["items"]
    if not found:
        by_key = await client.call("ledger", "GET", "/v1/ledger/entries", key=session.key, params={"entry_key": q})
        if not by_key.ok:
            return render(request, "audit/find.html", {**values, "problem": by_key.detail}, status=by_key.status)
        found = by_key.body["items"]
    return render(request, "audit/find.html", {**values, "found": found})


@routes.get("/audit/entries/{seq}")
@page(*AUDIT)
async def entry(request: web.Request, session: Session) -> web.StreamResponse:
    """One entry, its leaf hash and RFC 9162 inclusion proof, and the checkpoint it is proven against."""
    seq = request.match_info["seq"]
    if not whole(seq) or len(seq) > 18:
        raise NotFound(f"no entry {seq[:40]!r}: a sequence number is a whole number")
    reply = await upstream(request).call("ledger", "GET", f"/v1/ledger/entries/{int(seq)}", key=session.key)
    if not reply.ok:
        raise NotFound(reply.detail) if reply.status == 404 else _refusal(reply.status, reply.detail)
    return render(request, "audit/entry.html", {"found": reply.body})


def _refusal(status: int, detail: str) -> Exception:
    return Forbidden(detail) if status == 403 else ServiceUnavailable(detail)


@routes.get("/audit/consistency")
@page(*AUDIT)
async def consistency(request: web.Request, session: Session) -> web.StreamResponse:
    """The proof that the tree of size `second` extends the one of size `first`."""
    form = {k: request.query.get(k, "").strip()[:20] for k in ("first", "second")}
    values: dict[str, Any] = {"form": form, "proof": None}
    if not form["first"]:
        return render(request, "audit/consistency.html", values)
    errors = {k: "a tree size (a whole number)" for k, v in form.items() if v and not whole(v)}
    if errors:
        return render(request, "audit/consistency.html", {**values, "errors": errors}, status=422)
    params = {k: v for k, v in form.items() if v}
    reply = await upstream(request).call("ledger", "GET", "/v1/ledger/consistency", key=session.key, params=params)
    if not reply.ok:
        errors = reply.field_errors()
        return render(request, "audit/consistency.html", {**values, "errors": errors, "problem": reply.detail},
                      status=reply.status if reply.status < 500 else 503)
    return render(request, "audit/consistency.html", {**values, "proof": reply.body})


@routes.get("/audit/revenue")
@page(*AUDIT)
async def revenue(request: web.Request, session: Session) -> web.StreamResponse:
    """Revenue as the verified ledger records it, beside finance's report for the same days; every day
    whose figures differ is highlighted."""
    form = {k: request.query.get(k, "").strip()[:10] for k in ("from", "to")}
    values: dict[str, Any] = {"form": form, "report": None, "days": [], "differing": set(),
                              "log_audit": await _log_audit(request, session)}
    if not form["from"] or not form["to"]:
        return render(request, "audit/revenue.html", values)
    client = upstream(request)
    ledger = await client.call("ledger", "GET", "/v1/ledger/revenue", key=session.key, params=form, long=True)
    if not ledger.ok:
        return render(request, "audit/revenue.html", {**values, "errors": ledger.field_errors(),
                                                      "problem": ledger.detail},
                      status=ledger.status if ledger.status < 500 else 503)
    finance = await client.call("finance", "GET", "/v1/reports/revenue", key=session.key, long=True,
                                params={**form, "group_by": "day"})
    finance_rows = finance.body["rows"] if finance.ok else None
    differing = {(c["business_day"], c["channel"], c.get("location_id"), c["currency"])
                 for c in ledger.body.get("comparison") or []}
    return render(request, "audit/revenue.html", {
        **values, "report": ledger.body, "days": side_by_side(ledger.body["groups"], finance_rows),
        "differing": differing,
        "finance_problem": None if finance.ok else finance.detail})


@routes.get("/audit/revenue/log")
@page(*AUDIT)
async def log_audit(request: web.Request, session: Session) -> web.StreamResponse:
    """The whole-log audit's state alone: what the revenue page's htmx polls while the ledger's job runs."""
    return render(request, "audit/revenue.html", {"form": {}, "report": None, "days": [],
                                                  "log_audit": await _log_audit(request, session)}, block="log_audit")


async def _log_audit(request: web.Request, session: Session) -> dict[str, Any]:
    """GET /v1/ledger/audit: the stored result for the log's current size (200), or the background
    job's progress (202, which asks for a run if none is under way); a refusal is shown, not raised."""
    reply = await upstream(request).call("ledger", "GET", "/v1/ledger/audit", key=session.key)
    shown: dict[str, Any] = {"job": None, "result": None, "running": False, "error": None, "problem": None}
    if reply.status == 200:
        return {**shown, "result": reply.body}
    if reply.status == 202:
        return {**shown, "job": reply.body, "result": reply.body.get("last"), "running": True,
                "error": reply.body.get("last_error")}
    return {**shown, "problem": reply.detail}


def side_by_side(ledger_groups: list[dict[str, Any]], finance_rows: list[dict[str, Any]] | None
                 ) -> list[dict[str, Any]]:
    """Per day and currency: the ledger's total beside finance's revenue, and whether they differ. Both
    figures are the services' own; the page only lines them up (as Decimal: money is never a float)."""
    ledger_total: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for g in ledger_groups:
        ledger_total[(g["business_day"], g["currency"])] += _money(g["amount"])
    finance_total: dict[tuple[str, str], Decimal] = {}
    for row in finance_rows or []:
        finance_total[(str(row["key"]), row["currency"])] = _money(row["revenue"])
    days = []
    for key in sorted(ledger_total.keys() | finance_total.keys()):
        on_ledger, in_finance = ledger_total.get(key), finance_total.get(key)
        days.append({"day": key[0], "currency": key[1], "ledger": on_ledger, "finance": in_finance,
                     "differs": finance_rows is not None and (on_ledger or Decimal(0)) != (in_finance or Decimal(0))})
    return days


def _money(value: Any) -> Decimal:
    """A service's money figure; one that is not a decimal is that service's fault, said as such (read
    as 0 it would make an audit agree or differ on a figure nobody gave)."""
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ServiceUnavailable(f"a service reported revenue that is not a decimal: {str(value)[:40]!r}") from None


@routes.get("/audit/export")
@page(*AUDIT)
async def export_form(request: web.Request, session: Session) -> web.StreamResponse:
    """Download a bundle of seqs from..to (optionally proving consistency with an earlier tree size)."""
    form = {k: request.query.get(k, "").strip()[:20] for k in ("from", "to", "since")}
    if not form["from"] and not form["to"]:
        return render(request, "audit/export.html", {"form": form})
    errors = {k: "a whole number" for k, v in form.items() if (v or k != "since") and not whole(v)}
    if errors:
        return render(request, "audit/export.html", {"form": form, "errors": errors}, status=422)
    params = {k: v for k, v in form.items() if v}
    client = upstream(request)
    async with client.download("ledger", "/v1/ledger/export", key=session.key, params=params) as resp:
        if resp.status != 200:
            reply = await client.reply_of(resp)
            return render(request, "audit/export.html", {"form": form, "errors": reply.field_errors(),
                                                         "problem": reply.detail},
                          status=reply.status if reply.status < 500 else 503)
        name = f"omnistock-ledger-{int(form['from'])}-{int(form['to'])}.json"
        response = web.StreamResponse(headers={
            "Content-Type": resp.headers.get("Content-Type", "application/json"),
            "Content-Disposition": f'attachment; filename="{name}"', "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store"})
        await response.prepare(request)
        # The ledger's bytes as they come: the bundle is verified byte for byte, so nothing re-encodes it.
        async for chunk in resp.content.iter_chunked(64 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response


@routes.get("/audit/verify")
@page(*AUDIT)
async def verify(request: web.Request, session: Session) -> web.StreamResponse:
    """A bundle checked wholly in this browser against the auditor's trust folder (nothing is uploaded)."""
    return render(request, "audit/verify.html", {})
