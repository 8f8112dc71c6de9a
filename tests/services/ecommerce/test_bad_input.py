"""Bad input gets a 4xx problem+json naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.ecommerce.conftest import Channel

HOOK = {"url": "http://127.0.0.1:9/hooks", "events": ["availability.changed"], "secret": "s" * 20}


BAD_BATCHES: list[tuple[list[tuple[str, str]], str]] = [
    ([], "sku"),
    ([("sku", "")], "sku.0"),
    ([("sku", "x" * 300)], "sku.0"),
    ([("sku", "bad sku")], "sku.0"),
    ([("sku", f"S{i}") for i in range(501)], "sku"),
    ([("sku", "TEE-M"), ("color", "red")], "color"),
]


async def test_availability_batch_names_the_bad_parameter(channel: Channel) -> None:
    for params, field in BAD_BATCHES:
        status, body, _ = await channel.ecommerce.get("/v1/availability", params=params)
        assert_problem(status, body, 422, "validation-failed", field=field)


async def test_a_batch_of_500_is_fine(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.get("/v1/availability", params=[("sku", f"S{i}") for i in range(500)])
    assert status == 200 and len(body["unknown"]) == 500


BAD_READS: list[tuple[str, dict[str, str], str]] = [
    ("/v1/availability/stream", {"last_event_id": "abc"}, "last_event_id"),
    ("/v1/availability/stream", {"sku": "bad sku"}, "sku.0"),
    ("/v1/endless-aisle/TEE-M", {}, "body"),
    ("/v1/endless-aisle/TEE-M", {"location_id": "store-a", "lat": "1", "lon": "1"}, "body"),
    ("/v1/endless-aisle/TEE-M", {"location_id": "nowhere"}, "location_id"),
    ("/v1/endless-aisle/TEE-M", {"location_id": "store-a", "qty": "0"}, "qty"),
    ("/v1/endless-aisle/TEE-M", {"lat": "91", "lon": "0"}, "lat"),
    ("/v1/webhooks/abc", {}, "subscription_id"),
    ("/v1/webhooks/0", {}, "subscription_id"),
]


async def test_reads_name_the_bad_parameter(channel: Channel) -> None:
    for path, params, field in BAD_READS:
        status, body, _ = await channel.ecommerce.get(path, params=params)
        assert_problem(status, body, 422, field=field)


async def test_bad_last_event_id_header_is_422(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.get("/v1/availability/stream", headers={"Last-Event-ID": "99999999"})
    assert_problem(status, body, 422, field="Last-Event-ID")


BAD_SUBSCRIPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"url": "not a url at all"}, "url"),
    ({"url": None}, "url"),
    ({"events": []}, "events"),
    ({"events": ["stock.changed"]}, "events.0"),
    ({"secret": "short"}, "secret"),
    ({"secret": None}, "secret"),
    ({"extra": 1}, "extra"),
]


async def test_bad_subscriptions_name_the_field(channel: Channel) -> None:
    for change, field in BAD_SUBSCRIPTIONS:
        status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={**HOOK, **change})
        assert_problem(status, body, 422, "validation-failed", field=field)
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0


BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"buffer": {"kind": "percent", "value": 101}}, "buffer"),
    ({"buffer": {"kind": "absolute", "value": "1.5"}}, "buffer"),
    ({"buffer": {"kind": "absolute", "value": -1}}, "buffer.value"),
    ({"buffer": {"kind": "lots", "value": 1}}, "buffer.kind"),
    ({"buffer": {"kind": "absolute", "value": "NaN"}}, "buffer.value"),
    ({"low_stock_threshold": -1}, "low_stock_threshold"),
    ({"low_stock_threshold": "3"}, "low_stock_threshold"),
]


async def test_bad_channel_rules_name_the_field(channel: Channel) -> None:
    for rule, field in BAD_RULES:
        status, body, _ = await channel.ecommerce.put("/v1/channel-rules/TEE-M", json=rule)
        assert_problem(status, body, 422, "validation-failed", field=field)
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.channel_rules") == 0


async def test_a_rule_for_an_unknown_sku_is_422_and_deleting_a_missing_rule_404(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.put("/v1/channel-rules/NOPE", json={"low_stock_threshold": 1})
    assert_problem(status, body, 422, field="sku")
    status, body, _ = await channel.ecommerce.request("DELETE", "/v1/channel-rules/TEE-M")
    assert_problem(status, body, 404, "not-found")


async def test_unknown_subscription_and_delivery_are_404(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.get("/v1/webhooks/42/deliveries")
    assert_problem(status, body, 404, "not-found")
    status, body, _ = await channel.ecommerce.post("/v1/webhooks", json=HOOK)
    sub = body["id"]
    status, body, _ = await channel.ecommerce.post(f"/v1/webhooks/{sub}/deliveries/7/redeliver")
    assert_problem(status, body, 404, "not-found")
    status, body, _ = await channel.ecommerce.post("/v1/webhooks", data=b"{oops",
                                                   headers={"Content-Type": "application/json"})
    assert_problem(status, body, 400, "malformed-json")
