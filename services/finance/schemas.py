"""Request and response models of the finance API. Money is Decimal on the inside, "12.30" on the wire."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, RootModel, StringConstraints, WithJsonSchema, model_validator

from services.inventory.schemas import LocationId
from services.orders.schemas import TenderKind
from shared.http.models import RequestModel, ResponseModel
from shared.money import Currency, Money, SignedMoney
from shared.paging import Cursor
from shared.text import FreeText

MAX_TENDERS = 20
MAX_LIST = 1000
Channel = Literal["online", "store"]
ItemClass = Literal["matched", "amount_mismatch", "missing_payment", "missing_sale", "duplicate"]
Text = Annotated[FreeText, StringConstraints(min_length=1, max_length=128)]
Reason = Annotated[FreeText, StringConstraints(min_length=1, max_length=500, pattern=r"\S")]


def aware_datetime(value: object) -> datetime:
    """RFC 3339 text; a time without an offset is taken as UTC (providers' CSVs often omit it)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError("an RFC 3339 date-time string")
    parsed = datetime.fromisoformat(value.strip())
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if not 1970 <= parsed.year <= 9000:
        raise ValueError("a time between 1970 and 9000")
    return parsed


def _iso_date(value: object) -> object:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str) or len(value) != 10:
        raise ValueError("a date as YYYY-MM-DD")
    return date.fromisoformat(value)


SettledAt = Annotated[datetime, BeforeValidator(aware_datetime),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
IsoDate = Annotated[date, BeforeValidator(_iso_date), WithJsonSchema({"type": "string", "format": "date"})]


# --- settlements -------------------------------------------------------------------------------------


class SettlementIn(RequestModel):
    provider: Text
    external_id: Text
    order_id: Text  # our order id, or the channel's external id of the order
    amount: Money
    fee: Money = Decimal("0.00")
    currency: Currency
    settled_at: SettledAt
    type: Literal["capture", "refund"] = "capture"


SETTLEMENT_FIELDS = tuple(SettlementIn.model_fields)
# The body is read leniently (a list of objects) so that each element can be checked on its own and a
# bad one reported by position with the others; the documented schema is the strict one.
class SettlementBatch(RootModel[Annotated[
    list[dict[str, Any]],
    WithJsonSchema({"type": "array", "items": SettlementIn.model_json_schema()}),
]]):
    pass


class ImportQuery(RequestModel):
    # Rows identical to a voided settlement (and with no live one) are skipped unless this is true: the
    # same wrong file sent again must not bring back what someone voided on purpose.
    reimport_voided: bool = False


class VoidedRepeat(ResponseModel):
    line: int
    provider: str
    external_id: str
    voided_id: int  # the voided settlement the row repeats


class ImportOut(ResponseModel):
    batch_id: int | None
    received: int
    inserted: int
    already_imported: int  # the same values as the live settlement of their (provider, external_id)
    skipped_voided: int = 0  # identical to a voided settlement, not imported again (see reimport_voided)
    voided_repeats: list[VoidedRepeat] = []  # the first of those, by line


class SettlementOut(ResponseModel):
    id: int
    provider: str
    external_id: str
    order_id: str
    resolved_order_id: str | None
    type: str
    amount: Money
    fee: Money
    currency: str
    settled_at: datetime
    status: Literal["live", "voided"]
    voided_at: datetime | None = None
    voided_by: str | None = None
    void_reason: str | None = None


class VoidIn(RequestModel):
    reason: Reason


class VoidByKeyIn(RequestModel):
    provider: Text
    external_id: Text
    reason: Reason


class VoidOut(SettlementOut):
    # Current, uncommitted runs that counted this settlement: they cannot be committed any more; run
    # their scope again.
    stale_runs: list[int]


class SettlementQuery(RequestModel):
    order_id: Text | None = None
    status: Literal["live", "voided", "all"] = "all"
    cursor: Cursor | None = None
    after: Annotated[int, Field(ge=0, le=2**62)] = 0  # an id; kept for old clients, `cursor` is the way
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 100


class SettlementList(ResponseModel):
    items: list[SettlementOut]
    next_cursor: str | None = None
    next_after: int | None = None


# --- close-outs -------------------------------------------------------------------------------------


class TenderIn(RequestModel):
    kind: TenderKind
    amount: Money


class CloseoutIn(RequestModel):
    location_id: LocationId
    business_day: IsoDate
    currency: Currency
    tenders: Annotated[list[TenderIn], Field(min_length=1, max_length=MAX_TENDERS)]
    note: Annotated[FreeText, StringConstraints(max_length=500)] | None = None

    @model_validator(mode="after")
    def one_total_per_tender(self) -> CloseoutIn:
        kinds = [t.kind for t in self.tenders]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each tender kind once")
        return self


class TenderOut(ResponseModel):
    kind: str
    amount: Money


class CloseoutOut(ResponseModel):
    id: int
    location_id: str
    business_day: date
    currency: str
    tenders: list[TenderOut]
    note: str | None = None
    declared_by: str
    declared_at: datetime


class CloseoutQuery(RequestModel):
    business_day: IsoDate
    location_id: LocationId | None = None
    cursor: Cursor | None = None
    # One row per store: a whole chain's day fits in one page by default, as it did before paging.
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = MAX_LIST


class CloseoutList(ResponseModel):
    items: list[CloseoutOut]
    next_cursor: str | None = None


# --- reconciliation runs ---------------------------------------------------------------------------


class RunIn(RequestModel):
    business_day: IsoDate
    channel: Channel | None = None
    location_id: LocationId | None = None


class Counts(ResponseModel):
    matched: int
    amount_mismatch: int
    missing_payment: int
    missing_sale: int
    duplicate: int


class TotalOut(ResponseModel):
    currency: str
    sales: SignedMoney
    expected: SignedMoney
    paid: SignedMoney
    difference: SignedMoney


class ResolutionIn(RequestModel):
    """write_off: accept the difference; adjustment: book `amount` against it; linked_settlement: a
    later settlement (its id) accounts for it."""

    action: Literal["write_off", "adjustment", "linked_settlement"]
    reason: Reason
    amount: SignedMoney | None = None
    settlement_id: Annotated[int, Field(ge=1, le=2**62)] | None = None

    @model_validator(mode="after")
    def fields_fit_the_action(self) -> ResolutionIn:
        if (self.action == "linked_settlement") != (self.settlement_id is not None):
            raise ValueError("settlement_id is required for linked_settlement, and only for it")
        if (self.action == "adjustment") != (self.amount is not None):
            raise ValueError("amount is required for an adjustment, and only for it")
        return self


class ResolutionOut(ResponseModel):
    action: str
    reason: str
    amount: SignedMoney | None = None
    settlement_id: int | None = None
    resolved_by: str
    resolved_at: datetime


class ItemOut(ResponseModel):
    model_config = ConfigDict(from_attributes=True, serialize_by_alias=True)

    item_no: int
    kind: Literal["order", "settlement", "tender"]
    class_: ItemClass = Field(serialization_alias="class")
    order_id: str | None = None
    order_ref: str | None = None
    channel: str | None = None
    location_id: str | None = None
    tender: str | None = None
    currency: str
    sales_total: SignedMoney
    expected: SignedMoney
    paid: SignedMoney
    difference: SignedMoney
    sale_ids: list[int]
    settlement_ids: list[int]
    note: str | None = None
    resolution: ResolutionOut | None = None


class RunOut(ResponseModel):
    id: int
    status: Literal["open", "reconciled", "committed", "superseded"]
    business_day: date
    channel: str | None = None
    location_id: str | None = None
    counts: Counts
    totals: list[TotalOut]
    unresolved: int
    item_count: int
    items_root: str
    amount_tolerance: Money
    cash_tolerance: Money
    created_by: str
    created_at: datetime
    supersedes: int | None = None
    superseded_by: int | None = None
    committed_at: datetime | None = None
    committed_by: str | None = None
    override_reason: str | None = None
    items: list[ItemOut]
    items_truncated: bool = False  # the first items only (exceptions first): page through .../items


class RunQuery(RequestModel):
    business_day: IsoDate | None = None
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 50


class RunList(ResponseModel):
    items: list[RunOut]
    next_cursor: str | None = None


class ItemQuery(RequestModel):
    class_: ItemClass | None = Field(default=None, alias="class")
    cursor: Cursor | None = None
    after: Annotated[int, Field(ge=0, le=2**31)] = 0  # an item_no; kept for old clients, `cursor` is the way
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 100


class ItemList(ResponseModel):
    items: list[ItemOut]
    next_cursor: str | None = None
    next_after: int | None = None


class CommitIn(RequestModel):
    override_reason: Reason | None = None  # commit although items are unresolved; recorded with who


class CommitOut(ResponseModel):
    run_id: int
    status: str
    written: int  # ledger entries this call appended
    already: int  # entries an earlier commit had written
    override_reason: str | None = None


# --- reports ------------------------------------------------------------------------------------------


class DayRangeQuery(RequestModel):
    """Business days `from`..`to`, both included, at most ten years."""

    from_: IsoDate = Field(alias="from")
    to: IsoDate

    @model_validator(mode="after")
    def a_bounded_range(self) -> DayRangeQuery:
        if self.to < self.from_:
            raise ValueError("'to' is before 'from'")
        if (self.to - self.from_).days > 3660:
            raise ValueError("at most ten years at once")
        return self


class RevenueQuery(DayRangeQuery):
    group_by: Literal["day", "channel", "location"] = "day"


class RevenueRow(ResponseModel):
    key: str  # the day (YYYY-MM-DD), channel or location
    currency: str
    orders: int  # orders with a sale in the group
    gross: SignedMoney  # sales before returns
    returns: SignedMoney  # returns (negative)
    revenue: SignedMoney  # gross + returns
    average_order_value: SignedMoney  # gross / orders


class RevenueReport(ResponseModel):
    model_config = ConfigDict(from_attributes=True, serialize_by_alias=True)

    from_: date = Field(serialization_alias="from")
    to: date
    group_by: str
    rows: list[RevenueRow]


class PriceOverrideQuery(DayRangeQuery):
    """Sales lines sold at a price other than the catalogue's, over business days `from`..`to`."""

    location_id: LocationId | None = None
    include_channel: bool = False  # also online channels' own prices (their promotions)
    cursor: Cursor | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_LIST)] = 500


class PriceOverrideRow(ResponseModel):
    sale_id: int
    kind: str  # fulfillment, till, return (negative qty)
    order_id: str
    channel: str
    location_id: str
    business_day: date
    currency: str
    sku: str
    qty: int
    catalogue_price: Money
    unit_price: Money
    difference: SignedMoney  # (unit_price - catalogue_price) x qty: negative when sold below the catalogue
    price_source: str  # override | channel
    reason: str | None = None
    set_by: str | None = None  # the key that set the price (override)


class PriceOverrideReport(ResponseModel):
    items: list[PriceOverrideRow]
    next_cursor: str | None = None
