"""Request and response models of the inventory API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, StringConstraints, field_validator, model_validator

from shared.http.models import RequestModel, ResponseModel
from shared.money import Currency, Money
from shared.paging import Cursor
from shared.text import FreeText

LocationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Sku = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")]
Quantity = Annotated[int, Field(strict=True, ge=-1_000_000_000, le=1_000_000_000)]


class LocationIn(RequestModel):
    name: Annotated[FreeText, StringConstraints(min_length=1, max_length=200)]
    kind: Literal["store", "warehouse", "dc"]
    lat: Annotated[float, Field(strict=True, ge=-90, le=90, allow_inf_nan=False)]
    lon: Annotated[float, Field(strict=True, ge=-180, le=180, allow_inf_nan=False)]
    ship: Annotated[bool, Field(strict=True)]
    pickup: Annotated[bool, Field(strict=True)]
    timezone: str = "UTC"
    priority: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 100

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone name") from None
        return value


class LocationOut(ResponseModel):
    id: str
    name: str
    kind: str
    lat: float
    lon: float
    ship: bool
    pickup: bool
    timezone: str
    priority: int
    created_at: datetime
    updated_at: datetime


class LocationList(ResponseModel):
    items: list[LocationOut]


class SkuIn(RequestModel):
    name: Annotated[FreeText, StringConstraints(min_length=1, max_length=300)]
    price: Money
    currency: Currency


class SkuOut(ResponseModel):
    sku: str
    name: str
    price: Money
    currency: str
    created_at: datetime
    updated_at: datetime


class SkuList(ResponseModel):
    items: list[SkuOut]
    next_cursor: str | None = None  # send back as ?cursor= for the next page; None on the last page




class SkuListQuery(RequestModel):
    # A code prefix or a piece of the name, case-insensitive (a store associate types "jea" or "JEANS-3").
    q: Annotated[FreeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)] | None = None
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class MovementIn(RequestModel):
    sku: Sku
    location_id: LocationId
    kind: Literal["receipt", "adjustment", "count", "transfer"]
    qty: Quantity
    to_location_id: LocationId | None = None
    reason: Annotated[FreeText, StringConstraints(max_length=500)] | None = None


class MovementListQuery(RequestModel):
    sku: Sku | None = None
    location_id: LocationId | None = None
    order: Literal["oldest", "newest"] = "oldest"  # newest first: "who changed this stock lately?"
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class LevelListQuery(RequestModel):
    location_id: LocationId | None = None
    sku_prefix: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")] | None = (
        None)
    below_safety: bool = False  # only levels whose sellable units (on hand - reserved) are under safety stock
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class LevelRow(ResponseModel):
    sku: str
    location_id: str
    on_hand: int
    reserved: int
    safety_stock: int
    available: int
    updated_at: datetime


class LevelList(ResponseModel):
    items: list[LevelRow]
    next_cursor: str | None = None


class MovementRecord(ResponseModel):
    id: int
    sku: str
    location_id: str
    kind: str
    on_hand_delta: int
    reserved_delta: int
    reference: str | None
    reason: str | None
    actor: str | None
    created_at: datetime


class MovementList(ResponseModel):
    items: list[MovementRecord]
    next_cursor: str | None = None


class LevelOut(ResponseModel):
    location_id: str
    on_hand: int
    reserved: int
    safety_stock: int
    available: int


class MovementOut(ResponseModel):
    sku: str
    kind: str
    qty: int
    movement_ids: list[int]
    levels: list[LevelOut]


class StockOut(ResponseModel):
    sku: str
    locations: list[LevelOut]
    total_available: int


class SafetyStockIn(RequestModel):
    safety_stock: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)]


class NearbyQuery(RequestModel):
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None
    location_id: LocationId | None = None
    radius_km: Annotated[float, Field(gt=0, le=20_100, allow_inf_nan=False)] | None = None
    min_available: Annotated[int, Field(ge=0, le=1_000_000_000)] = 1
    limit: Annotated[int, Field(ge=1, le=500)] = 20

    @model_validator(mode="after")
    def one_origin(self) -> NearbyQuery:
        has_point = self.lat is not None or self.lon is not None
        if has_point and self.location_id is not None:
            raise ValueError("give lat and lon, or location_id, not both")
        if not has_point and self.location_id is None:
            raise ValueError("give lat and lon, or location_id")
        if has_point and (self.lat is None or self.lon is None):
            raise ValueError("lat and lon go together")
        return self


class NearbyResult(ResponseModel):
    location_id: str
    name: str
    distance_km: float
    available: int


class NearbyOut(ResponseModel):
    sku: str
    results: list[NearbyResult]


class EventsQuery(RequestModel):
    sku: Sku | None = None
    location_id: LocationId | None = None
    # For clients that cannot set headers (curl, browsers' first connect); the header wins when both are sent.
    last_event_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,19}$")] | None = None
