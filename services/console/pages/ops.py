"""Operations: stock by location, the movement journal (who, when, why), transfers, channel rules, and
webhook subscriptions with their deliveries, dead letters and redelivery. Every read and write is an
inventory or e-commerce API call with the signed-in person's key."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, field_validator

from services.console.web import (
    AREAS,
    Session,
    form_data,
    page,
    parse_form,
    redirect,
    refused,
    render,
    upstream,
)
from services.ecommerce.domain import AVAILABILITY_TOPICS
from shared.errors import Conflict, NotFound

routes = web.RouteTableDef()
OPS = AREAS["ops"]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]
Text = Annotated[str, StringConstraints(max_length=500)]
QUERY_FIELDS = ("location_id", "sku_prefix", "below_safety", "cursor", "sku", "status")


def _query(request: web.Request, *names: str) -> dict[str, str]:
    """The page's own filters, passed on to the API as they are (the API refuses what is wrong)."""
    return {n: v[:200] for n in names if (v := request.query.get(n, "").strip())}


async def _locations(request: web.Request, session: Session) -> list[dict[str, Any]]:
    reply = await upstream(request).call("inventory", "GET", "/v1/locations", key=session.key)
    return reply.items()


# --- stock by location ---------------------------------------------------------------------------


@routes.get("/ops")
@page(*OPS)
async def levels(request: web.Request, session: Session) -> web.StreamResponse:
    """Stock by location: on hand, reserved, safety stock, available."""
    filters = _query(request, "location_id", "sku_prefix", "below_safety", "cursor")
    if filters.get("below_safety"):
        filters["below_safety"] = "true"
    reply = await upstream(request).call("inventory", "GET", "/v1/stock", key=session.key,
                                         params={**filters, "limit": "50"})
    items = reply.items()
    # The API has no such filter: this keeps the unavailable ones of each page it returns (the cursor
    # still walks every level, so a page may show fewer rows than it read).
    if request.query.get("unavailable"):
        filters["unavailable"] = "true"
        items = [r for r in items if r.get("available", 0) <= 0]
    values = {"filters": filters, "locations": await _locations(request, session),
              "levels": items,
              "next_cursor": reply.next_cursor()}
    if not reply.ok:
        return refused(request, "ops/levels.html", {**values, "form": filters}, reply, block="levels")
    return render(request, "ops/levels.html", {**values, "form": filters}, block="levels")


# --- the movement journal ------------------------------------------------------------------------


@routes.get("/ops/movements")
@page(*OPS)
async def movements(request: web.Request, session: Session) -> web.StreamResponse:
    """The journal, newest first: who changed this stock, when and why."""
    filters = _query(request, "sku", "location_id", "cursor")
    reply = await upstream(request).call("inventory", "GET", "/v1/stock/movements", key=session.key,
                                         params={**filters, "order": "newest", "limit": "50"})
    values = {"filters": filters, "form": filters, "locations": await _locations(request, session),
              "movements": reply.items(),
              "next_cursor": reply.next_cursor()}
    if not reply.ok:
        return refused(request, "ops/movements.html", values, reply, block="journal")
    return render(request, "ops/movements.html", values, block="journal")


# --- transfers -----------------------------------------------------------------------------------


class TransferForm(BaseModel):
    sku: Code
    location_id: Code
    to_location_id: Code
    qty: int = Field(ge=1, le=1_000_000)
    reason: Text | None = None

    @field_validator("to_location_id")
    @classmethod
    def elsewhere(cls, value: str, info: Any) -> str:
        if value == info.data.get("location_id"):
            raise ValueError("a transfer goes to another location")
        return value


async def _recent_transfers(request: web.Request, session: Session) -> list[dict[str, Any]]:
    reply = await upstream(request).call("inventory", "GET", "/v1/stock/movements", key=session.key,
                                         params={"order": "newest", "limit": "200"})
    items = reply.items()
    return [m for m in items if m["kind"] == "transfer" and m["on_hand_delta"] < 0][:20]


@routes.get("/ops/transfers")
@page(*OPS)
async def transfers(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, "ops/transfers.html", {"locations": await _locations(request, session),
                                                  "transfers": await _recent_transfers(request, session)})


@routes.post("/ops/transfers")
@page(*OPS)
async def make_transfer(request: web.Request, session: Session) -> web.StreamResponse:
    form, errors, raw = await parse_form(request, TransferForm)
    idem = (await form_data(request)).get("idem") or None
    base = {"locations": await _locations(request, session), "form": raw}
    if form is None:
        return render(request, "ops/transfers.html", {**base, "errors": errors,
                                                      "transfers": await _recent_transfers(request, session)},
                      status=422)
    reply = await upstream(request).call("inventory", "POST", "/v1/stock/movements", key=session.key,
                                         idempotency_key=idem, json_body={**form.model_dump(exclude_none=True),
                                                                          "kind": "transfer"})
    if not reply.ok:
        return refused(request, "ops/transfers.html",
                       {**base, "transfers": await _recent_transfers(request, session)}, reply)
    return redirect(request, "/ops/transfers?done=1")


# --- channel rules -------------------------------------------------------------------------------


class RuleForm(BaseModel):
    sku: Code | None = None  # none: the default rule
    buffer_kind: Literal["absolute", "percent"] | None = None
    buffer_value: Decimal | None = Field(default=None, ge=0, le=1_000_000_000, max_digits=14, decimal_places=2)
    low_stock_threshold: int | None = Field(default=None, ge=0, le=1_000_000_000)

    @field_validator("buffer_value")
    @classmethod
    def with_kind(cls, value: Decimal | None, info: Any) -> Decimal | None:
        if (value is None) != (info.data.get("buffer_kind") is None):
            raise ValueError("a buffer needs both its kind and its value")
        return value


async def _rules(request: web.Request, session: Session) -> dict[str, Any]:
    reply = await upstream(request).call("ecommerce", "GET", "/v1/channel-rules", key=session.key)
    return reply.body if reply.ok and isinstance(reply.body, dict) else {"default": None, "items": []}


@routes.get("/ops/channels")
@page(*OPS)
async def channels(request: web.Request, session: Session) -> web.StreamResponse:
    """What the online channel may sell of each SKU: buffers held back and the low-stock threshold."""
    return render(request, "ops/channels.html", {"rules": await _rules(request, session)})


@routes.post("/ops/channels")
@page(*OPS)
async def set_rule(request: web.Request, session: Session) -> web.StreamResponse:
    form, errors, raw = await parse_form(request, RuleForm)
    if form is None:
        return render(request, "ops/channels.html", {"rules": await _rules(request, session), "form": raw,
                                                     "errors": errors}, status=422)
    body: dict[str, Any] = {"low_stock_threshold": form.low_stock_threshold}
    if form.buffer_kind is not None:
        body["buffer"] = {"kind": form.buffer_kind, "value": str(form.buffer_value)}
    path = f"/v1/channel-rules/{form.sku}" if form.sku else "/v1/channel-rules"
    reply = await upstream(request).call("ecommerce", "PUT", path, key=session.key, json_body=body)
    if not reply.ok:
        return refused(request, "ops/channels.html", {"rules": await _rules(request, session), "form": raw}, reply)
    return redirect(request, "/ops/channels")


@routes.post("/ops/channels/{sku}/delete")
@page(*OPS)
async def delete_rule(request: web.Request, session: Session) -> web.StreamResponse:
    reply = await upstream(request).call("ecommerce", "DELETE", f"/v1/channel-rules/{request.match_info['sku']}",
                                         key=session.key)
    if not reply.ok:
        return refused(request, "ops/channels.html", {"rules": await _rules(request, session)}, reply)
    return redirect(request, "/ops/channels")


# --- webhooks ------------------------------------------------------------------------------------


class SubscriptionForm(BaseModel):
    url: Annotated[str, StringConstraints(min_length=8, max_length=2000)]
    secret: Annotated[str, StringConstraints(min_length=16, max_length=200)]


async def _subscriptions(request: web.Request, session: Session) -> list[dict[str, Any]]:
    reply = await upstream(request).call("ecommerce", "GET", "/v1/webhooks", key=session.key)
    return reply.items()


@routes.get("/ops/webhooks")
@page(*OPS)
async def webhooks(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, "ops/webhooks.html", {"subscriptions": await _subscriptions(request, session),
                                                 "topics": AVAILABILITY_TOPICS, "chosen": []})


@routes.post("/ops/webhooks")
@page(*OPS)
async def subscribe(request: web.Request, session: Session) -> web.StreamResponse:
    form, errors, raw = await parse_form(request, SubscriptionForm)
    events = [t for t in (await request.post()).getall("events", []) if isinstance(t, str)]
    values = {"subscriptions": await _subscriptions(request, session), "topics": AVAILABILITY_TOPICS,
              "form": {**raw, "secret": ""}, "chosen": events}
    if not events:
        errors["events"] = "choose at least one event"
    if form is None or errors:
        return render(request, "ops/webhooks.html", {**values, "errors": errors}, status=422)
    reply = await upstream(request).call("ecommerce", "POST", "/v1/webhooks", key=session.key,
                                         json_body={"url": form.url, "secret": form.secret, "events": events})
    if not reply.ok:
        return refused(request, "ops/webhooks.html", values, reply)
    return redirect(request, f"/ops/webhooks/{reply.body['id']}")


def _subscription_id(request: web.Request) -> int:
    raw = request.match_info["subscription_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound("no such subscription")
    return int(raw)


@routes.get("/ops/webhooks/{subscription_id}")
@page(*OPS)
async def deliveries(request: web.Request, session: Session) -> web.StreamResponse:
    """A subscription's deliveries, the dead letters among them, and redelivery."""
    sid = _subscription_id(request)
    client = upstream(request)
    sub = await client.call("ecommerce", "GET", f"/v1/webhooks/{sid}", key=session.key)
    if not sub.ok:
        raise NotFound(sub.detail)
    filters = _query(request, "status", "cursor")
    reply = await client.call("ecommerce", "GET", f"/v1/webhooks/{sid}/deliveries", key=session.key,
                              params={**filters, "limit": "50"})
    values = {"subscription": sub.body, "filters": filters, "form": filters,
              "deliveries": reply.items(),
              "next_cursor": reply.next_cursor()}
    if not reply.ok:
        return refused(request, "ops/deliveries.html", values, reply, block="deliveries")
    return render(request, "ops/deliveries.html", values, block="deliveries")


@routes.post("/ops/webhooks/{subscription_id}/delete")
@page(*OPS)
async def unsubscribe(request: web.Request, session: Session) -> web.StreamResponse:
    sid = _subscription_id(request)
    reply = await upstream(request).call("ecommerce", "DELETE", f"/v1/webhooks/{sid}", key=session.key)
    if not reply.ok:
        raise NotFound(reply.detail)
    return redirect(request, "/ops/webhooks")


@routes.post("/ops/webhooks/{subscription_id}/deliveries/{delivery_id}/redeliver")
@page(*OPS)
async def redeliver(request: web.Request, session: Session) -> web.StreamResponse:
    sid = _subscription_id(request)
    delivery = request.match_info["delivery_id"]
    if not delivery.isdigit() or len(delivery) > 18:
        raise NotFound("no such delivery")
    reply = await upstream(request).call("ecommerce", "POST", f"/v1/webhooks/{sid}/deliveries/{delivery}/redeliver",
                                         key=session.key)
    if not reply.ok:
        raise NotFound(reply.detail) if reply.status == 404 else Conflict(reply.detail)
    return redirect(request, f"/ops/webhooks/{sid}?redelivered={delivery}")


# --- orders --------------------------------------------------------------------------------------


@routes.get("/ops/orders")
@page(*OPS)
async def orders(request: web.Request, session: Session) -> web.StreamResponse:
    """Orders of every channel, newest first, filtered by status, channel and location."""
    filters = _query(request, "status", "channel", "location_id", "cursor")
    reply = await upstream(request).call("orders", "GET", "/v1/orders", key=session.key,
                                         params={**filters, "limit": "50"})
    values = {"filters": filters, "form": filters, "locations": await _locations(request, session),
              "orders": reply.items(),
              "next_cursor": reply.next_cursor()}
    if not reply.ok:
        return refused(request, "ops/orders.html", values, reply, block="orders")
    return render(request, "ops/orders.html", values, block="orders")


@routes.get("/ops/orders/{order_id}")
@page(*OPS)
async def order(request: web.Request, session: Session) -> web.StreamResponse:
    """One order: its lines, allocations and its history, each step naming who took it."""
    order_id = request.match_info["order_id"]
    if len(order_id) > 100:
        raise NotFound("no such order")
    reply = await upstream(request).call("orders", "GET", f"/v1/orders/{quote(order_id, safe='')}", key=session.key)
    if not reply.ok:
        raise NotFound(reply.detail)
    return render(request, "ops/order.html", {"order": reply.body})
