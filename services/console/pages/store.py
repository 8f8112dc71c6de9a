"""The store associate's pages (phone first): find a SKU, its stock here, nearby and online (live, see
store_live.py), reserve it elsewhere for pick-up or ship it to the customer, receive, count and
transfer out, and the pick-up queue of this store.

Every figure and every change is an API call with the person's own key, always for the session's
location: the page never lets the browser name another store as "here", and what the API refuses
(another store's units, too little stock) is shown as the API's reason.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, model_validator

from services.console.upstream import Reply
from services.console.web import (
    AREAS,
    Session,
    idempotency_key,
    page,
    parse_form,
    redirect,
    refused,
    render,
    upstream,
)
from shared.errors import NotFound, Problem
from shared.text import FreeText

routes = web.RouteTableDef()
STORE = AREAS["store"]
SKU = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
LOCATION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ORDER_ID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
NEARBY_LIMIT = "10"
SEARCH_LIMIT = 20
LocationId = Annotated[str, StringConstraints(pattern=LOCATION)]
Text = Annotated[FreeText, StringConstraints(max_length=500)]


class UpstreamRefused(Problem):
    """A read the page needs was refused: the page shows the API's status and reason."""

    code, title = "upstream-refused", "The service refused"

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.detail)
        self.status = reply.status if 400 <= reply.status < 500 else 503


def _path(sku: str) -> str:
    return quote(sku, safe="")


async def _idem(request: web.Request) -> str | None:
    """The form's own Idempotency-Key (rendered in it), so a double submit does the thing once."""
    value = (await request.post()).get("idem")
    return value if isinstance(value, str) and value else None


def _must(reply: Reply) -> Any:
    if reply.status == 404:
        raise NotFound(reply.detail)
    if not reply.ok:
        raise UpstreamRefused(reply)
    return reply.body


# --- reads -------------------------------------------------------------------------------------


async def sku_view(request: web.Request, session: Session, sku: str) -> dict[str, Any]:
    """Everything the SKU page shows: the SKU, its level here, nearby stores, online availability."""
    call = upstream(request).call
    here = session.location_id or ""
    item, stock, nearby, online = await asyncio.gather(
        call("inventory", "GET", f"/v1/skus/{_path(sku)}", key=session.key),
        call("inventory", "GET", f"/v1/stock/{_path(sku)}", key=session.key),
        call("inventory", "GET", f"/v1/stock/{_path(sku)}/nearby", key=session.key,
             params={"location_id": here, "limit": NEARBY_LIMIT}),
        call("ecommerce", "GET", f"/v1/availability/{_path(sku)}", key=session.key),
    )
    item_body, stock_body = _must(item), _must(stock)
    level = next((lv for lv in stock_body["locations"] if lv["location_id"] == here),
                 {"location_id": here, "on_hand": 0, "reserved": 0, "safety_stock": 0, "available": 0})
    others = [r for r in _must(nearby)["results"] if r["location_id"] != here]
    return {"sku": item_body, "here": level, "nearby": others,
            "online": online.body if online.ok else None,
            "online_problem": None if online.ok else online.detail}


def location_names(view: dict[str, Any]) -> dict[str, str]:
    return {r["location_id"]: r["name"] for r in view["nearby"]}


@routes.get("/store")
@page(*STORE)
async def store_home(request: web.Request, session: Session) -> web.StreamResponse:
    """Find a SKU by its code or a piece of its name; the results are a partial for htmx."""
    q = request.query.get("q", "").strip()
    values: dict[str, Any] = {"form": {"q": q}, "results": None, "next_cursor": None}
    if q:
        params = {"q": q, "limit": str(SEARCH_LIMIT)}
        if cursor := request.query.get("cursor"):
            params["cursor"] = cursor
        reply = await upstream(request).call("inventory", "GET", "/v1/skus", key=session.key, params=params)
        if not reply.ok:
            return refused(request, "store/index.html", values, reply, block="results")
        values |= {"results": reply.body["items"], "next_cursor": reply.body.get("next_cursor"),
                   "more": "/store?" + urlencode({"q": q, "cursor": reply.body["next_cursor"]})
                   if reply.body.get("next_cursor") else None}
    return render(request, "store/index.html", values, block="results")


@routes.get(f"/store/sku/{{sku:{SKU}}}")
@page(*STORE)
async def sku_page(request: web.Request, session: Session) -> web.StreamResponse:
    """Stock here, at nearby stores and online, kept live by /store/sku/{sku}/events."""
    sku = request.match_info["sku"]
    view = await sku_view(request, session, sku)
    return render(request, "store/sku.html", {**view, "recorded": request.query.get("recorded"),
                                              "form": {"kind": "receipt"}})


# --- receive, count, transfer out ----------------------------------------------------------------


class MovementForm(BaseModel):
    kind: Literal["receipt", "count", "transfer"]
    qty: Annotated[int, Field(ge=0, le=1_000_000)]
    to_location_id: LocationId | None = None
    reason: Text | None = None

    @model_validator(mode="after")
    def consistent(self) -> MovementForm:
        if self.kind != "count" and self.qty == 0:
            raise ValueError("qty: must be at least 1")
        if self.kind == "transfer" and self.to_location_id is None:
            raise ValueError("to_location_id: name the location the goods go to")
        if self.kind != "transfer" and self.to_location_id is not None:
            raise ValueError("to_location_id: only a transfer goes to another location")
        return self


def _split_model_error(errors: dict[str, str]) -> dict[str, str]:
    """A model validator's "field: message" lands next to that field, not at the top of the form."""
    out = dict(errors)
    if "form" in out and ": " in out["form"]:
        name, message = out.pop("form").split(": ", 1)
        out[name] = message
    return out


@routes.post(f"/store/sku/{{sku:{SKU}}}/movements")
@page(*STORE)
async def post_movement(request: web.Request, session: Session) -> web.StreamResponse:
    """Receive goods, count or transfer out, always at this store (the API refuses any other)."""
    sku = request.match_info["sku"]
    form, errors, values = await parse_form(request, MovementForm)
    if form is None:
        view = await sku_view(request, session, sku)
        return render(request, "store/sku.html", {**view, "form": values, "errors": _split_model_error(errors),
                                                  "recorded": None}, status=422, block="move")
    body = {"sku": sku, "location_id": session.location_id, "kind": form.kind, "qty": form.qty,
            "to_location_id": form.to_location_id, "reason": form.reason}
    reply = await upstream(request).call("inventory", "POST", "/v1/stock/movements", key=session.key,
                                         json_body={k: v for k, v in body.items() if v is not None},
                                         idempotency_key=await _idem(request))
    if not reply.ok:
        if reply.status == 404:
            raise NotFound(reply.detail)
        view = await sku_view(request, session, sku)
        return refused(request, "store/sku.html", {**view, "form": values, "recorded": None}, reply, block="move")
    return redirect(request, f"/store/sku/{_path(sku)}?recorded={form.kind}")


# --- reserve for pick-up elsewhere, or ship to the customer (endless aisle) ----------------------


class ReserveForm(BaseModel):
    mode: Literal["pickup", "ship"]
    at: LocationId
    qty: Annotated[int, Field(ge=1, le=1000)]
    customer_ref: Annotated[FreeText, StringConstraints(max_length=100)] | None = None


def _reserve_values(view: dict[str, Any], mode: str, at: str) -> dict[str, Any]:
    names = location_names(view)
    return {**view, "mode": mode, "at": at, "at_name": names.get(at, at)}


@routes.get(f"/store/sku/{{sku:{SKU}}}/reserve")
@page(*STORE)
async def reserve_page(request: web.Request, session: Session) -> web.StreamResponse:
    """The second tap: how many, and (shipping) a reference for the customer."""
    sku = request.match_info["sku"]
    mode, at = request.query.get("mode", ""), request.query.get("at", "")
    if mode not in ("pickup", "ship") or not at:
        raise NotFound("choose a store's row on the SKU page first")
    view = await sku_view(request, session, sku)
    return render(request, "store/reserve.html", {**_reserve_values(view, mode, at), "form": {"qty": "1"}})


@routes.post(f"/store/sku/{{sku:{SKU}}}/reserve")
@page(*STORE)
async def reserve(request: web.Request, session: Session) -> web.StreamResponse:
    sku = request.match_info["sku"]
    form, errors, values = await parse_form(request, ReserveForm)
    mode, at = values.get("mode", "pickup"), values.get("at", "")
    if form is None:
        view = await sku_view(request, session, sku)
        return render(request, "store/reserve.html", {**_reserve_values(view, mode, at), "form": values,
                                                      "errors": errors}, status=422, block="confirm")
    item = _must(await upstream(request).call("inventory", "GET", f"/v1/skus/{_path(sku)}", key=session.key))
    body: dict[str, Any] = {"channel": "store", "currency": item["currency"], "lines": [{"sku": sku, "qty": form.qty}],
                            "fulfillment": {"type": form.mode, "location_id": form.at}}
    if form.customer_ref:
        body["external_id"] = form.customer_ref
    reply = await upstream(request).call("orders", "POST", "/v1/orders", key=session.key, json_body=body,
                                         idempotency_key=await _idem(request))
    if not reply.ok:
        view = await sku_view(request, session, sku)
        return refused(request, "store/reserve.html", {**_reserve_values(view, mode, at), "form": values}, reply,
                       block="confirm")
    return redirect(request, f"/store/orders/{reply.body['id']}")


@routes.get(f"/store/orders/{{order_id:{ORDER_ID}}}")
@page(*STORE)
async def order_page(request: web.Request, session: Session) -> web.StreamResponse:
    """An order's id (the customer's receipt), status and where its units are held."""
    reply = await upstream(request).call("orders", "GET", f"/v1/orders/{request.match_info['order_id']}",
                                         key=session.key)
    return render(request, "store/order.html", {"order": _must(reply)})


# --- the pick-up queue -------------------------------------------------------------------------


async def pickup_queue(request: web.Request, session: Session) -> list[dict[str, Any]]:
    """Open orders to be picked up here (placed or paid, units still reserved), oldest first."""
    here = session.location_id or ""
    replies = await asyncio.gather(*(
        upstream(request).call("orders", "GET", "/v1/orders", key=session.key,
                               params={"location_id": here, "status": status, "limit": "200"})
        for status in ("placed", "paid")))
    orders = [o for reply in replies for o in _must(reply)["items"]]
    mine = [o for o in orders if o["fulfillment"]["type"] == "pickup" and o["fulfillment"]["location_id"] == here]
    return sorted(mine, key=lambda o: o["created_at"])


def _queue_values(orders: list[dict[str, Any]]) -> dict[str, Any]:
    return {"orders": orders, "fresh": idempotency_key}


@routes.get("/store/pickups")
@page(*STORE)
async def pickups(request: web.Request, session: Session) -> web.StreamResponse:
    values = _queue_values(await pickup_queue(request, session))
    return render(request, "store/pickups.html", {**values, "done": request.query.get("done")}, block="queue")


class RejectForm(BaseModel):
    reason: Annotated[FreeText, StringConstraints(min_length=1, max_length=500)]


ACTIONS = {"preparing": "being prepared", "ready": "ready at the counter", "pay": "paid", "handover": "handed over",
           "reject": "rejected"}


@routes.post(f"/store/pickups/{{order_id:{ORDER_ID}}}/{{action:preparing|ready|pay|handover|reject}}")
@page(*STORE)
async def pickup_action(request: web.Request, session: Session) -> web.StreamResponse:
    """Mark the order being prepared or ready, record payment at the counter, hand over (fulfil, then
    close if paid), or reject with a reason (the order is cancelled, which releases its reserved stock)."""
    order_id, action = request.match_info["order_id"], request.match_info["action"]
    idem = await _idem(request)
    call = upstream(request).call
    reply: Reply
    if action == "reject":
        form, errors, values = await parse_form(request, RejectForm)
        if form is None:
            queue = _queue_values(await pickup_queue(request, session))
            return render(request, "store/pickups.html", {**queue, "done": None, "errors": errors,
                                                          "failed": order_id, "form": values},
                          status=422, block="queue")
        reply = await call("orders", "POST", f"/v1/orders/{order_id}/cancel", key=session.key,
                           json_body={"reason": form.reason}, idempotency_key=idem)
    elif action in ("preparing", "ready"):
        reply = await call("orders", "POST", f"/v1/orders/{order_id}/pickup-stage", key=session.key,
                           json_body={"stage": action}, idempotency_key=idem)
    elif action == "pay":
        reply = await call("orders", "POST", f"/v1/orders/{order_id}/pay", key=session.key, json_body={},
                           idempotency_key=idem)
    else:
        reply = await call("orders", "POST", f"/v1/orders/{order_id}/fulfill", key=session.key,
                           idempotency_key=idem)
        if reply.ok and reply.body.get("paid_at"):
            reply = await call("orders", "POST", f"/v1/orders/{order_id}/complete", key=session.key,
                               idempotency_key=f"{idem}-complete" if idem else None)
    if not reply.ok:
        queue = _queue_values(await pickup_queue(request, session))
        return refused(request, "store/pickups.html", {**queue, "done": None, "failed": order_id}, reply,
                       block="queue")
    return redirect(request, f"/store/pickups?done={action}")

