"""Inbound shop orders: placed through the orders domain, once per (channel, external id)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

from services.ecommerce import repository as repo
from services.ecommerce import shopify
from services.ecommerce.domain import StaleWebhook
from services.ecommerce.schemas import ShopOrderOut
from services.orders import use_cases as orders
from services.orders.schemas import PaymentIn
from shared.auth import Principal
from shared.db import Pool, transaction

# Who a signed shop webhook acts as: the shop role, as if it had sent a shop key.
SHOP = Principal(0, "shop")


async def place_shop_order(pool: Pool, placement: orders.Placement, channel: str, order: shopify.ShopifyOrder,
                           raw_body: bytes, max_age_s: float) -> tuple[int, ShopOrderOut, bool]:
    """(status, result, replayed): 201 and a new order the first time, 200 and the same result after.

    The claim, the order with its reservations and the stored result commit together: if placement
    fails (409 insufficient stock, 422), nothing is kept and the shop's own retry starts afresh. A
    delivery older than `max_age_s` that was never accepted is refused (its claim rolls back): a
    captured body would otherwise place its order whenever it is sent; one accepted before is still a
    replay, whatever its age, since answering it again creates nothing.
    """
    external_id = shopify.external_id(channel, order)
    async with transaction(pool) as conn:
        if not await repo.claim_shop_order(conn, channel, external_id, hashlib.sha256(raw_body).digest()):
            stored = await repo.replayed_shop_order(conn, channel, external_id)
            return 200, ShopOrderOut.model_validate(stored), True
        if shopify.too_old(order, datetime.now(UTC), max_age_s):
            raise StaleWebhook(f"order {order.id} was signed at {shopify.signed_time(order).isoformat()}, older than"
                               f" {max_age_s:g} s; nothing was placed", max_age_s=max_age_s)
        skus = [item.sku for item in order.line_items if item.sku]
        order_in = shopify.to_order(channel, order, await repo.known_skus(conn, skus))
        placed = await orders.place_order(conn, order_in, SHOP, placement)
        if order.financial_status == "paid":
            # Paid at the shop's checkout: record it, so the unpaid-reservation sweeper leaves it alone.
            placed = await orders.pay(conn, uuid.UUID(placed.id),
                                      PaymentIn(provider=channel, reference=str(order.id)), SHOP)
        result = ShopOrderOut(
            order_id=placed.id, external_id=external_id, status=placed.status, total=placed.total,
            allocations=[{"sku": a.sku, "location_id": a.location_id, "qty": a.qty} for a in placed.allocations],
        )
        await repo.complete_shop_order(conn, channel, external_id, placed.id, result.model_dump(mode="json"))
    return 201, result, False
