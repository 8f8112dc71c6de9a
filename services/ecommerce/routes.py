"""E-commerce HTTP: parse, authorize, call a use case, render.

Role matrix (tests/services/ecommerce/test_access.py):
- availability (batch, one SKU, stream) and reading channel rules: every role;
- endless aisle: admin, ops, store, shop (the till and the shop place the order it suggests);
- channel rules (buffer, low-stock threshold): admin, ops write;
- webhooks (subscribe, list, delete, delivery log, redeliver): admin, ops — a subscription's secret
  and target URL are operator configuration, not something a shop key may change;
- inbound shop orders: no API key (Shopify cannot send one); the shop's HMAC signature over the raw
  body (X-Shopify-Hmac-Sha256, with OMNISTOCK_SHOP_WEBHOOK_SECRET) authenticates it, and it acts as
  the shop role. Missing or wrong signature, or no secret configured: 401.
"""

from __future__ import annotations

from typing import Annotated

import orjson
from aiohttp import web
from pydantic import Field, ValidationError

from services.ecommerce import shop_orders, shopify, use_cases, webhooks
from services.ecommerce.schemas import (
    AisleOut,
    AisleQuery,
    AvailabilityList,
    AvailabilityQuery,
    DeliveriesQuery,
    DeliveryDetail,
    DeliveryList,
    DeliveryOut,
    RuleIn,
    RuleList,
    RuleOut,
    ShopOrderOut,
    SkuAvailability,
    StreamQuery,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from services.inventory.schemas import Sku
from services.orders.use_cases import Placement
from shared.errors import MalformedJson, Unauthorized
from shared.http.api import Api, Call, Reply, validation_errors
from shared.http.sse import stream_events
from shared.outbox import Event

RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]
api = Api("ecommerce", path_types={"sku": Sku, "subscription_id": RowId, "delivery_id": RowId})

SHOP_PLACEMENT = web.AppKey("ecommerce_shop_placement", Placement)
RULE_WRITERS = ("admin", "ops")
WEBHOOK_MANAGERS = ("admin", "ops")
AISLE_READERS = ("admin", "ops", "store", "shop")
STREAM_FAMILIES = ["availability"]  # what GET /v1/availability/stream carries


# --- availability -----------------------------------------------------------------------------------


@api.get("/v1/availability", query=AvailabilityQuery, response=AvailabilityList)
async def get_availability(call: Call[None, AvailabilityQuery]) -> AvailabilityList:
    """Sellable online now, for up to 500 SKUs (`?sku=A&sku=B`)."""
    return await use_cases.batch_availability(call.pool, call.query.sku)


def _render(event: Event) -> bytes:
    return orjson.dumps({"id": event.id, "topic": event.topic, "created_at": event.created_at, **event.payload})


# Registered before /v1/availability/{sku}, so "stream" is this route, not a SKU.
@api.get("/v1/availability/stream", query=StreamQuery, produces="text/event-stream",
         extra_responses={410: "stream-resync-required: Last-Event-ID from before the retention window"})
async def get_availability_stream(call: Call[None, StreamQuery]) -> web.StreamResponse:
    """Availability changes (and low/out/back-in-stock) as Server-Sent Events; Last-Event-ID resumes."""
    skus = frozenset(call.query.sku) if call.query.sku else None

    def keep(event: Event) -> bool:
        return skus is None or event.key in skus

    return await stream_events(call.request, families=STREAM_FAMILIES, keep=keep, render=_render)


@api.get("/v1/availability/{sku}", response=SkuAvailability, extra_responses={404: "unknown sku"})
async def get_sku_availability(call: Call[None, None]) -> SkuAvailability:
    """One SKU: sellable online, before the buffer, and per pick-up store."""
    return await use_cases.sku_availability(call.pool, call.path("sku"))


@api.get("/v1/endless-aisle/{sku}", query=AisleQuery, response=AisleOut, roles=AISLE_READERS,
         extra_responses={404: "unknown sku"})
async def get_endless_aisle(call: Call[None, AisleQuery]) -> AisleOut:
    """Where else the SKU can be had now: ship from which location, pick up at which nearby store."""
    return await use_cases.endless_aisle(call.pool, call.path("sku"), call.query)


# --- channel rules ----------------------------------------------------------------------------------


@api.get("/v1/channel-rules", response=RuleList)
async def get_rules(call: Call[None, None]) -> RuleList:
    """The default channel rule and every SKU's own."""
    return await use_cases.list_rules(call.pool)


@api.put("/v1/channel-rules", body=RuleIn, response=RuleOut, roles=RULE_WRITERS)
async def put_default_rule(call: Call[RuleIn, None]) -> RuleOut:
    """The default buffer and low-stock threshold (a SKU's own rule overrides field by field)."""
    return await use_cases.put_rule(call.pool, None, call.body)


@api.put("/v1/channel-rules/{sku}", body=RuleIn, response=RuleOut, roles=RULE_WRITERS)
async def put_sku_rule(call: Call[RuleIn, None]) -> RuleOut:
    """A SKU's buffer (absolute units or percent) and low-stock threshold; null fields inherit the default."""
    return await use_cases.put_rule(call.pool, call.path("sku"), call.body)


@api.delete("/v1/channel-rules/{sku}", roles=RULE_WRITERS, extra_responses={404: "no rule for that sku"})
async def delete_sku_rule(call: Call[None, None]) -> dict[str, str]:
    """Drop a SKU's own rule: the default applies again."""
    await use_cases.delete_rule(call.pool, call.path("sku"))
    return {"deleted": call.path("sku")}


# --- webhooks ---------------------------------------------------------------------------------------


@api.post("/v1/webhooks", body=SubscriptionIn, response=SubscriptionOut, status=201, roles=WEBHOOK_MANAGERS)
async def post_webhook(call: Call[SubscriptionIn, None]) -> SubscriptionOut:
    """Subscribe a URL to availability events. Deliveries carry `X-Omnistock-Signature:
    t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`: refuse a `t` far from your clock.
    The URL must be http(s) on port 80 or 443 and reach a public address unless allow-listed (422 `url`)."""
    return await webhooks.subscribe(call.pool, call.body, call.settings.webhook_allow_hosts,
                                    call.principal.subject)


@api.get("/v1/webhooks", response=SubscriptionList, roles=WEBHOOK_MANAGERS)
async def list_webhooks(call: Call[None, None]) -> SubscriptionList:
    """Live subscriptions (secrets are never shown)."""
    return await webhooks.subscriptions(call.pool)


@api.get("/v1/webhooks/{subscription_id}", response=SubscriptionOut, roles=WEBHOOK_MANAGERS,
         extra_responses={404: "no such subscription"})
async def get_webhook(call: Call[None, None]) -> SubscriptionOut:
    """One subscription."""
    return await webhooks.subscription(call.pool, int(call.path("subscription_id")))


@api.delete("/v1/webhooks/{subscription_id}", response=SubscriptionOut, roles=WEBHOOK_MANAGERS,
            extra_responses={404: "no such subscription"})
async def delete_webhook(call: Call[None, None]) -> SubscriptionOut:
    """Unsubscribe; messages not yet sent are cancelled, the delivery log stays."""
    return await webhooks.unsubscribe(call.pool, int(call.path("subscription_id")))


@api.get("/v1/webhooks/{subscription_id}/deliveries", query=DeliveriesQuery, response=DeliveryList,
         roles=WEBHOOK_MANAGERS, extra_responses={404: "no such subscription"})
async def list_deliveries(call: Call[None, DeliveriesQuery]) -> DeliveryList:
    """The delivery log, newest first (`?status=dead` lists the dead letters; `cursor` pages)."""
    q = call.query
    return await webhooks.deliveries(call.pool, int(call.path("subscription_id")), q.status, q.cursor, q.limit)


@api.get("/v1/webhooks/{subscription_id}/deliveries/{delivery_id}", response=DeliveryDetail,
         roles=WEBHOOK_MANAGERS, extra_responses={404: "no such delivery"})
async def get_delivery(call: Call[None, None]) -> DeliveryDetail:
    """One delivery with every attempt (time, duration, HTTP status or error)."""
    return await webhooks.delivery(call.pool, int(call.path("subscription_id")), int(call.path("delivery_id")))


@api.post("/v1/webhooks/{subscription_id}/deliveries/{delivery_id}/redeliver", response=DeliveryOut,
          status=202, roles=WEBHOOK_MANAGERS,
          extra_responses={404: "no such delivery", 409: "the delivery is still queued or being sent"})
async def post_redeliver(call: Call[None, None]) -> Reply:
    """Send a delivered or dead-lettered message again (same event id and body, fresh attempts)."""
    out = await webhooks.redeliver(call.pool, int(call.path("subscription_id")), int(call.path("delivery_id")))
    return Reply(202, out)


# --- inbound shop orders ----------------------------------------------------------------------------


@api.post("/v1/shop/orders", response=ShopOrderOut, status=201, public=True,
          extra_responses={401: "missing or wrong signature",
                           409: "insufficient-stock (nothing reserved)",
                           422: "unknown SKU or invalid order; stale-webhook: signed longer ago than"
                                " OMNISTOCK_SHOP_WEBHOOK_MAX_AGE_S and never accepted (nothing placed)"})
async def post_shop_order(call: Call[None, None]) -> Reply:
    """A shop's order (Shopify orders/create body), placed through orders once per external id.

    201 the first time; a replay of the same shop order answers 200 with the first result.
    """
    secret = call.settings.shop_webhook_secret
    if secret is None:
        # Nothing can be verified, so nothing is accepted: the operator sets OMNISTOCK_SHOP_WEBHOOK_SECRET.
        raise Unauthorized("shop orders cannot be verified: this service has no shop secret configured")
    if not shopify.signature_valid(secret.get_secret_value(), call.raw_body,
                                   call.request.headers.get("X-Shopify-Hmac-Sha256")):
        raise Unauthorized("X-Shopify-Hmac-Sha256 is missing or does not match the body")
    try:
        order = shopify.ShopifyOrder.model_validate(orjson.loads(call.raw_body))
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise validation_errors(exc) from None
    status, result, replayed = await shop_orders.place_shop_order(
        call.pool, call.request.app[SHOP_PLACEMENT], call.settings.shop_channel, order, call.raw_body,
        call.settings.shop_webhook_max_age_s)
    return Reply(status, result, {"Idempotent-Replayed": "true"} if replayed else {})
