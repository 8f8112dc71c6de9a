"""Request and response models of the e-commerce API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from services.ecommerce.domain import AVAILABILITY_TOPICS
from services.inventory.schemas import LocationId, Sku
from shared.http.models import RequestModel, ResponseModel
from shared.paging import Cursor
from shared.text import FreeText

MAX_BATCH = 500
StockState = Literal["in_stock", "low_stock", "out_of_stock"]
Topic = Literal[
    "availability.changed", "availability.low_stock", "availability.out_of_stock", "availability.back_in_stock"
]


# --- availability -----------------------------------------------------------------------------------


class AvailabilityQuery(RequestModel):
    sku: Annotated[list[Sku], Field(min_length=1, max_length=MAX_BATCH)]


class AvailabilityItem(ResponseModel):
    sku: str
    available: int
    state: StockState


class AvailabilityList(ResponseModel):
    items: list[AvailabilityItem]
    unknown: list[str] = Field(description="requested SKUs that are not in the catalogue")


class PickupStore(ResponseModel):
    location_id: str
    name: str
    available: int


class SkuAvailability(ResponseModel):
    sku: str
    available: int = Field(description="sellable online now: ship-enabled stock less the channel buffer")
    state: StockState
    ship_available: int = Field(description="ship-enabled stock before the channel buffer")
    pickup: list[PickupStore] = Field(description="pick-up stores holding the SKU now")
    updated_at: datetime | None


class StreamQuery(RequestModel):
    sku: list[Sku] | None = Field(default=None, max_length=MAX_BATCH)
    last_event_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,19}$")] | None = None


# --- channel rules ----------------------------------------------------------------------------------


class Buffer(RequestModel):
    kind: Literal["absolute", "percent"]
    value: Annotated[Decimal, Field(ge=0, le=1_000_000_000, max_digits=14, decimal_places=2)]

    @model_validator(mode="after")
    def sensible(self) -> Buffer:
        if self.kind == "percent" and self.value > 100:
            raise ValueError("a percentage buffer is at most 100")
        if self.kind == "absolute" and self.value != self.value.to_integral_value():
            raise ValueError("an absolute buffer is a whole number of units")
        return self


class RuleIn(RequestModel):
    buffer: Buffer | None = None
    low_stock_threshold: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)] | None = None


class BufferOut(ResponseModel):
    # Not Buffer itself: /openapi.json names schemas by class, and a Decimal reads as a number or a
    # string but is written as a string; one class would document one of the two wrongly.
    kind: str
    value: Decimal


class RuleOut(ResponseModel):
    sku: str | None = Field(description="null for the default rule")
    buffer: BufferOut | None
    low_stock_threshold: int | None
    updated_at: datetime


class RuleList(ResponseModel):
    default: RuleOut | None
    items: list[RuleOut]


# --- webhooks ---------------------------------------------------------------------------------------


class SubscriptionIn(RequestModel):
    url: Annotated[FreeText, StringConstraints(min_length=8, max_length=2000)]
    events: Annotated[list[Topic], Field(min_length=1, max_length=len(AVAILABILITY_TOPICS))]
    secret: Annotated[FreeText, StringConstraints(min_length=16, max_length=200)]
    # "batch": many SKUs' changes in one signed POST of type availability.batch (README, Webhooks).
    delivery: Literal["each", "batch"] = "each"

    @field_validator("events")
    @classmethod
    def distinct(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class SubscriptionOut(ResponseModel):
    id: int
    url: str
    events: list[str]
    delivery: Literal["each", "batch"]
    created_at: datetime


class SubscriptionList(ResponseModel):
    items: list[SubscriptionOut]


class DeliveriesQuery(RequestModel):
    status: Literal["pending", "sending", "delivered", "dead", "cancelled"] | None = None
    cursor: Cursor | None = None  # a next_cursor, unchanged
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class AttemptOut(ResponseModel):
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryOut(ResponseModel):
    id: int
    subscription_id: int
    event_id: int
    topic: str
    key: str
    status: str
    attempts: int
    coalesced: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryDetail(DeliveryOut):
    log: list[AttemptOut]


class DeliveryList(ResponseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = None  # send back as ?cursor= for the next page; None on the last page


# --- endless aisle ----------------------------------------------------------------------------------


class AisleQuery(RequestModel):
    location_id: LocationId | None = None
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None
    qty: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    radius_km: Annotated[float, Field(gt=0, le=20_100, allow_inf_nan=False)] = 50.0
    limit: Annotated[int, Field(ge=1, le=100)] = 10

    @model_validator(mode="after")
    def one_origin(self) -> AisleQuery:
        has_point = self.lat is not None or self.lon is not None
        if has_point == (self.location_id is not None):
            raise ValueError("give location_id, or lat and lon")
        if has_point and (self.lat is None or self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class AisleOption(ResponseModel):
    location_id: str
    name: str
    kind: str
    available: int
    distance_km: float


class AisleOut(ResponseModel):
    sku: str
    qty: int
    here: int | None = Field(description="available at the origin store (when asked from a store)")
    ship_from: list[AisleOption] = Field(description="locations that can ship the quantity, nearest first")
    pickup_at: list[AisleOption] = Field(description="pick-up stores within radius_km holding it, nearest first")


# --- inbound shop orders ----------------------------------------------------------------------------


class ShopAllocation(ResponseModel):
    sku: str
    location_id: str
    qty: int


class ShopOrderOut(ResponseModel):
    order_id: str
    external_id: str = Field(description="'<channel>:<the shop's order id>', the order's external_id in orders")
    status: str
    total: Decimal
    allocations: list[ShopAllocation]
