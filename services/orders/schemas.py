"""Request and response models of the orders API. Money is Decimal, rendered as a string ("12.30")."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, model_validator

from services.inventory.schemas import Currency, LocationId, Sku
from shared.http.models import RequestModel, ResponseModel
from shared.paging import Cursor
from shared.text import FreeText

MAX_LINES = 100
MAX_LINE_QTY = 100_000

Qty = Annotated[int, Field(strict=True, ge=1, le=MAX_LINE_QTY)]
Money = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
PositiveMoney = Annotated[Decimal, Field(gt=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
Channel = Literal["online", "store"]
Status = Literal["placed", "paid", "fulfilled", "completed", "cancelled"]
Note = Annotated[FreeText, StringConstraints(max_length=500)]


def _iso_date(value: object) -> object:
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise ValueError("a date as YYYY-MM-DD")
    return date.fromisoformat(value)


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class PriceOverrideIn(RequestModel):
    reason: Annotated[FreeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class LineIn(RequestModel):
    """`unit_price` left out: the catalogue price. Store orders and till sales at another price need
    `price_override: {reason}` and a key allowed to set it; online orders carry the channel's price."""

    sku: Sku
    qty: Qty
    unit_price: Money | None = None
    price_override: PriceOverrideIn | None = None


class ChargeIn(RequestModel):
    kind: Literal["shipping", "tax", "discount"]
    amount: Money


class ShipTo(RequestModel):
    lat: Annotated[Coordinate, Field(ge=-90, le=90)]
    lon: Annotated[Coordinate, Field(ge=-180, le=180)]


class FulfillmentIn(RequestModel):
    """`pickup`: location_id is the pickup store, the only source. `ship`: location_id, if given, pins
    the shipping location; otherwise the sourcing policy picks among ship-enabled locations."""

    type: Literal["ship", "pickup"]
    location_id: LocationId | None = None
    ship_to: ShipTo | None = None

    @model_validator(mode="after")
    def pickup_needs_a_store(self) -> FulfillmentIn:
        if self.type == "pickup" and self.location_id is None:
            raise ValueError("a pickup order needs location_id (the pickup store)")
        if self.type == "pickup" and self.ship_to is not None:
            raise ValueError("a pickup order has no ship_to")
        return self


class OrderIn(RequestModel):
    channel: Channel
    external_id: Annotated[FreeText, StringConstraints(min_length=1, max_length=100)] | None = None
    # channel 'store' (endless aisle, pick-up sold at a till): the selling store; a store key's own
    # location by default.
    selling_location_id: LocationId | None = None
    currency: Currency
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)]
    charges: Annotated[list[ChargeIn], Field(max_length=10)] = []
    fulfillment: FulfillmentIn


class AllocationOut(ResponseModel):
    sku: str
    location_id: str
    qty: int
    fulfilled: int = 0
    cancelled: int = 0
    open: int


class PriceOverrideOut(ResponseModel):
    reason: str
    by: str  # the principal that set the price


PriceSource = Literal["catalogue", "override", "channel"]


class LineOut(ResponseModel):
    sku: str
    qty: int
    unit_price: Decimal
    amount: Decimal
    fulfilled: int = 0
    cancelled: int = 0
    returned: int = 0
    open: int
    catalogue_price: Decimal | None = None  # None only on orders placed before prices were checked
    price_source: PriceSource | None = None
    price_override: PriceOverrideOut | None = None


class ChargeOut(ResponseModel):
    kind: str
    amount: Decimal


class HistoryOut(ResponseModel):
    event: str
    status: str
    at: datetime
    actor: str
    detail: dict[str, Any] | None = None


class FulfillmentOut(ResponseModel):
    type: str
    location_id: str | None = None
    ship_to: dict[str, float] | None = None


class OrderOut(ResponseModel):
    id: str
    status: Status
    channel: Channel
    external_id: str | None = None
    selling_location_id: str | None = None
    currency: str
    fulfillment: FulfillmentOut
    lines: list[LineOut]
    charges: list[ChargeOut]
    lines_total: Decimal
    total: Decimal
    allocations: list[AllocationOut]
    reserved_until: datetime | None = None
    paid_at: datetime | None = None
    created_at: datetime
    history: list[HistoryOut]
    pickup_stage: Literal["preparing", "ready"] | None = None  # a pick-up order's latest stage in the store


class PickupStageIn(RequestModel):
    stage: Literal["preparing", "ready"]


class OrderList(ResponseModel):
    items: list[OrderOut]
    next_cursor: str | None = None  # send back as ?cursor= for the next page; None on the last page


class OrderListQuery(RequestModel):
    status: Status | None = None
    channel: Channel | None = None
    location_id: LocationId | None = None  # selling, pickup or allocated location
    cursor: Cursor | None = None  # next_cursor of the previous page
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class QtyLineIn(RequestModel):
    sku: Sku
    qty: Qty
    location_id: LocationId | None = None  # which allocation; any open one when absent


class PartialIn(RequestModel):
    """Body of fulfil and cancel: no body (or no `lines`) means every open unit."""

    lines: Annotated[list[QtyLineIn], Field(min_length=1, max_length=MAX_LINES)] | None = None
    reason: Note | None = None


class PaymentIn(RequestModel):
    """Recording payment stops the reservation clock. `amount`, if given, must equal the order total."""

    amount: Money | None = None
    provider: Annotated[FreeText, StringConstraints(min_length=1, max_length=50)] | None = None
    reference: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)] | None = None


class ReturnLineIn(RequestModel):
    sku: Sku
    qty: Qty


class ReturnIn(RequestModel):
    lines: Annotated[list[ReturnLineIn], Field(min_length=1, max_length=MAX_LINES)]
    location_id: LocationId
    reason: Note | None = None


class SaleLineOut(ResponseModel):
    sku: str
    qty: int
    unit_price: Decimal
    amount: Decimal
    location_id: str
    catalogue_price: Decimal | None = None
    price_source: PriceSource | None = None
    price_override: PriceOverrideOut | None = None


class SaleOut(ResponseModel):
    id: int
    kind: str
    channel: str
    order_id: str
    location_id: str
    business_day: date
    currency: str
    lines: list[SaleLineOut]
    goods_amount: Decimal
    shipping: Decimal
    tax: Decimal
    discount: Decimal
    total: Decimal
    tenders: list[dict[str, Any]] | None = None
    reference: str
    occurred_at: datetime


class ReturnOut(ResponseModel):
    order_id: str
    status: Status
    location_id: str
    lines: list[ReturnLineIn]
    sale: SaleOut


# A tender's name (cash, card, gift_card...); finance's close-outs use the same type so that what a
# store declares can always be matched with what its tills took.
TenderKind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class TenderIn(RequestModel):
    kind: TenderKind
    amount: PositiveMoney
    reference: Annotated[FreeText, StringConstraints(max_length=200)] | None = None


class TillChargeIn(RequestModel):
    kind: Literal["tax", "discount"]
    amount: Money


class TillSaleIn(RequestModel):
    location_id: LocationId
    currency: Currency
    lines: Annotated[list[LineIn], Field(min_length=1, max_length=MAX_LINES)]
    charges: Annotated[list[TillChargeIn], Field(max_length=10)] = []
    tenders: Annotated[list[TenderIn], Field(min_length=1, max_length=20)]


class TillSaleOut(ResponseModel):
    id: str  # the order the sale created (returns go to /v1/orders/{id}/returns)
    status: Status
    location_id: str
    currency: str
    total: Decimal
    lines: list[SaleLineOut]
    tenders: list[dict[str, Any]]
    sale_id: int
    business_day: date
    sold_at: datetime


class SalesQuery(RequestModel):
    business_day: IsoDate
    channel: Channel | None = None
    location_id: LocationId | None = None
    cursor: Cursor | None = None  # next_cursor of the previous page
    limit: Annotated[int, Field(ge=1, le=1000)] = 500


class SaleList(ResponseModel):
    items: list[SaleOut]
    next_cursor: str | None = None


class SweepOut(ResponseModel):
    expired_orders: int
