"""Shopify's orders/create webhook: its signature, the part of its body we use, and the mapping to an
order of the orders domain. Pure: no I/O.

The body is Shopify's order object (no {"order": ...} wrapper). Unknown fields are ignored (Shopify
sends a hundred); the ones read here are validated as strictly as our own API's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.orders.schemas import ChargeIn, FulfillmentIn, LineIn, OrderIn, ShipTo
from shared.errors import ValidationFailed

ShopMoney = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ShopifyLineItem(_Lenient):
    sku: str | None = None
    quantity: Annotated[int, Field(strict=True, ge=1, le=100_000)]
    price: ShopMoney


class ShopifyShippingLine(_Lenient):
    price: ShopMoney


class ShopifyAddress(_Lenient):
    latitude: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)] | None = None


class ShopifyOrder(_Lenient):
    id: Annotated[int, Field(strict=True, ge=1)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    line_items: Annotated[list[ShopifyLineItem], Field(min_length=1, max_length=100)]
    shipping_lines: Annotated[list[ShopifyShippingLine], Field(max_length=20)] = []
    total_tax: ShopMoney = Decimal(0)
    taxes_included: bool = False
    total_discounts: ShopMoney = Decimal(0)
    shipping_address: ShopifyAddress | None = None
    financial_status: str | None = None
    # Signed with the body (X-Shopify-Triggered-At is not): the only trustworthy times of a delivery.
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None


def signed_time(order: ShopifyOrder) -> datetime:
    """The newest time inside the signed body. Shopify signs after it writes the order, so the delivery
    is at least this old: judging by it never lets an old delivery pass, and the newest (updated_at, on
    an order paid days after it was created) wrongs a fresh one least."""
    return max(t for t in (order.created_at, order.updated_at) if t is not None)


def too_old(order: ShopifyOrder, now: datetime, max_age_s: float) -> bool:
    return now - signed_time(order) > timedelta(seconds=max_age_s)


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """X-Shopify-Hmac-Sha256 is base64(HMAC-SHA256(secret, raw body)); compared in constant time."""
    if not header:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def external_id(channel: str, order: ShopifyOrder) -> str:
    return f"{channel}:{order.id}"


def to_order(channel: str, order: ShopifyOrder, known_skus: set[str]) -> OrderIn:
    """Lines by SKU (one line per SKU), shipping lines summed into one shipping charge, tax (unless
    included in prices) and discounts as charges: total = lines + shipping + tax - discount, as Shopify's."""
    errors = []
    quantities: dict[str, int] = {}
    prices: dict[str, Decimal] = {}
    for i, item in enumerate(order.line_items):
        field = f"line_items.{i}.sku"
        if not item.sku:
            errors.append({"field": field, "problem": "a line item without a SKU cannot be fulfilled"})
        elif item.sku not in known_skus:
            errors.append({"field": field, "problem": f"unknown sku '{item.sku}'"})
        elif item.sku in prices and prices[item.sku] != item.price:
            errors.append({"field": f"line_items.{i}.price", "problem": f"sku '{item.sku}' at two prices"})
        else:
            quantities[item.sku] = quantities.get(item.sku, 0) + item.quantity
            prices[item.sku] = item.price
    if errors:
        raise ValidationFailed(errors)
    charges = []
    shipping = sum((line.price for line in order.shipping_lines), Decimal(0))
    if shipping:
        charges.append(ChargeIn(kind="shipping", amount=shipping))
    if order.total_tax and not order.taxes_included:
        charges.append(ChargeIn(kind="tax", amount=order.total_tax))
    if order.total_discounts:
        charges.append(ChargeIn(kind="discount", amount=order.total_discounts))
    address = order.shipping_address
    ship_to = None
    if address is not None and address.latitude is not None and address.longitude is not None:
        ship_to = ShipTo(lat=address.latitude, lon=address.longitude)
    return OrderIn(
        channel="online", external_id=external_id(channel, order), currency=order.currency,
        lines=[LineIn(sku=sku, qty=qty, unit_price=prices[sku]) for sku, qty in quantities.items()],
        charges=charges, fulfillment=FulfillmentIn(type="ship", ship_to=ship_to),
    )
