"""Orders HTTP: parse, authorize, call a use case, render.

Who may do what (403 otherwise); services/orders/README.md has the full matrix:
- place: admin, ops (any channel), shop (online), store (channel store, sold at its own location);
- list orders: every role, a store key only orders involving its location; an order by id: every role;
- read sales records: admin, ops, finance, auditor;
- pay: admin, ops, shop (online orders), store (orders sold or picked up at its location);
- cancel: admin, ops, shop (online orders), store (units allocated at its location);
- fulfil: admin, ops, store (units allocated at its location); complete: admin, ops, store (involved);
- returns: admin, ops, store (restocking at its own location); till sales: admin, ops, store (its own);
- sweep now: admin.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.orders import use_cases
from services.orders.group_placement import PlacementGroup
from services.orders.schemas import (
    OrderIn,
    OrderList,
    OrderListQuery,
    OrderOut,
    PartialIn,
    PaymentIn,
    PickupStageIn,
    ReturnIn,
    ReturnOut,
    SaleList,
    SalesQuery,
    SweepOut,
    TillSaleIn,
    TillSaleOut,
)
from shared.db import Connection, transaction
from shared.errors import MalformedJson, UnsupportedMediaType
from shared.http.api import Api, Call, Reply, validation_errors

M = TypeVar("M", bound=BaseModel)

api = Api("orders", path_types={"order_id": uuid.UUID})
PLACEMENT = web.AppKey("orders_placement", use_cases.Placement)
PLACEMENT_GROUP = web.AppKey("orders_placement_group", PlacementGroup)

PLACERS = ("admin", "ops", "store", "shop")
PAYERS = ("admin", "ops", "store", "shop")
OPERATORS = ("admin", "ops", "store")
SALES_READERS = ("admin", "ops", "finance", "auditor")
IDEMPOTENT_409 = "illegal-transition, or Idempotency-Key reused"


def optional_body(call: Call[Any, Any], model: type[M]) -> M:
    """Bodies that may be left out entirely (cancel everything, fulfil everything, pay)."""
    raw = call.raw_body
    if not raw.strip():
        return model()
    ctype = call.request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {ctype}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(exc) from None


async def once_if_keyed(call: Call[Any, Any], work: Callable[[Connection], Awaitable[Any]]) -> Any:
    """With an Idempotency-Key, at most once per key (a retried partial fulfilment must not fulfil
    twice); without one, a plain transaction: a full cancel or fulfil retried is a 409, not harm."""
    if call.request.headers.get("Idempotency-Key") is not None:
        async def keyed(conn: Connection) -> tuple[int, Any]:
            return 200, await work(conn)

        return await call.once(keyed)
    async with transaction(call.pool) as conn:
        return await work(conn)


def order_id(call: Call[Any, Any]) -> uuid.UUID:
    return uuid.UUID(call.path("order_id"))


@api.post("/v1/orders", body=OrderIn, response=OrderOut, status=201, roles=PLACERS, idempotent=True,
          extra_responses={409: "insufficient-stock (nothing reserved), or Idempotency-Key reused"})
async def place_order(call: Call[OrderIn, None]) -> Reply:
    """Place an order: source every line and reserve it, or reserve nothing."""
    # Placed together with the orders arriving at the same time, one transaction per group
    # (group_placement.py), with the same Idempotency-Key semantics as call.once.
    stored = await call.request.app[PLACEMENT_GROUP].place(call.body, call.principal, *call.idempotency())
    return Reply(stored.status, stored.body, {"Idempotent-Replayed": "true"} if stored.replayed else {})


LONG_URL = {400: "request line too long"}


@api.get("/v1/orders", query=OrderListQuery, response=OrderList, extra_responses=LONG_URL)
async def list_orders(call: Call[None, OrderListQuery]) -> OrderList:
    """Orders, newest first; filter by status, channel, or a location they involve."""
    return await use_cases.list_orders(call.pool, call.query, call.principal)


@api.get("/v1/orders/{order_id}", response=OrderOut, extra_responses={404: "unknown order"})
async def get_order(call: Call[None, None]) -> OrderOut:
    """The order with its lines, allocations and status history."""
    return await use_cases.get_order(call.pool, order_id(call))


@api.post("/v1/orders/{order_id}/pay", response=OrderOut, roles=PAYERS,
          extra_responses={404: "unknown order", 409: IDEMPOTENT_409})
async def pay(call: Call[None, None]) -> Any:
    """Record payment (optional body {amount, provider, reference}); stops the reservation clock."""
    body = optional_body(call, PaymentIn)
    return await once_if_keyed(call, lambda conn: use_cases.pay(conn, order_id(call), body, call.principal))


@api.post("/v1/orders/{order_id}/cancel", response=OrderOut, roles=PAYERS,
          extra_responses={404: "unknown order", 409: IDEMPOTENT_409})
async def cancel(call: Call[None, None]) -> Any:
    """Release reserved units: all (no body), or {lines: [{sku, qty, location_id?}], reason?}."""
    body = optional_body(call, PartialIn)
    return await once_if_keyed(call, lambda conn: use_cases.cancel(conn, order_id(call), body, call.principal))


@api.post("/v1/orders/{order_id}/fulfill", response=OrderOut, roles=OPERATORS,
          extra_responses={404: "unknown order", 409: IDEMPOTENT_409})
async def fulfill(call: Call[None, None]) -> Any:
    """Shipped or picked up: all open units (no body), or {lines: [{sku, qty, location_id?}]}."""
    body = optional_body(call, PartialIn)
    return await once_if_keyed(call, lambda conn: use_cases.fulfill(conn, order_id(call), body, call.principal))


@api.post("/v1/orders/{order_id}/pickup-stage", body=PickupStageIn, response=OrderOut, roles=OPERATORS,
          extra_responses={404: "unknown order", 409: "not a pick-up order, or no longer placed or paid"})
async def pickup_stage(call: Call[PickupStageIn, None]) -> Any:
    """A pick-up order is `preparing` or `ready` at the pick-up store (a history event; status unchanged)."""
    return await once_if_keyed(call, lambda conn: use_cases.mark_pickup_stage(conn, order_id(call), call.body.stage,
                                                                               call.principal))


@api.post("/v1/orders/{order_id}/complete", response=OrderOut, roles=OPERATORS,
          extra_responses={404: "unknown order", 409: IDEMPOTENT_409})
async def complete(call: Call[None, None]) -> Any:
    """Close a fulfilled, paid order."""
    return await once_if_keyed(call, lambda conn: use_cases.complete(conn, order_id(call), call.principal))


@api.post("/v1/orders/{order_id}/returns", body=ReturnIn, response=ReturnOut, status=201, roles=OPERATORS,
          idempotent=True, extra_responses={404: "unknown order", 409: IDEMPOTENT_409})
async def post_return(call: Call[ReturnIn, None]) -> Reply:
    """Take fulfilled units back into stock at location_id: a negative sale there."""

    async def work(conn: Connection) -> tuple[int, ReturnOut]:
        return 201, await use_cases.return_goods(conn, order_id(call), call.body, call.principal)

    return await call.once(work)


@api.post("/v1/pos/sales", body=TillSaleIn, response=TillSaleOut, status=201, roles=OPERATORS, idempotent=True,
          extra_responses={409: "insufficient-stock, or Idempotency-Key reused"})
async def till_sale(call: Call[TillSaleIn, None]) -> Reply:
    """A till sale: on-hand goes down at once; tenders must sum to the total (422 otherwise)."""

    async def work(conn: Connection) -> tuple[int, TillSaleOut]:
        return 201, await use_cases.till_sale(conn, call.body, call.principal,
                                              call.request.app[PLACEMENT].store_max_discount_pct)

    return await call.once(work)


@api.get("/v1/sales", query=SalesQuery, response=SaleList, roles=SALES_READERS, extra_responses=LONG_URL)
async def list_sales(call: Call[None, SalesQuery]) -> SaleList:
    """Sales records of one business day (fulfilments, till sales, returns), in id order."""
    return await use_cases.list_sales(call.pool, call.query)


@api.post("/v1/orders/reservations/sweep", response=SweepOut, roles=("admin",))
async def sweep(call: Call[None, None]) -> SweepOut:
    """Release expired reservations now (the background sweeper does this every 30 s by default)."""
    return SweepOut(expired_orders=await use_cases.expire_reservations(call.pool))
