"""Sellable availability: ship-enabled stock, less the channel buffer; per-store pick-up; stock events."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.services.ecommerce.conftest import Channel


async def availability_events(pool: asyncpg.Pool, sku: str) -> list[tuple[str, dict[str, Any]]]:
    rows = await pool.fetch("SELECT topic, payload FROM core.events WHERE key = $1 AND topic LIKE 'availability.%'"
                            " ORDER BY id", sku)
    return [(r["topic"], r["payload"]) for r in rows]


async def test_sums_ship_enabled_locations_only(channel: Channel) -> None:
    await channel.receive("TEE-M", "store-a", 7)  # pick-up only: not sellable online
    await channel.receive("TEE-M", "store-b", 3)
    await channel.receive("TEE-M", "wh-1", 10)
    assert await channel.available("TEE-M") == 13
    status, body, _ = await channel.ecommerce.get("/v1/availability", params=[("sku", "TEE-M"), ("sku", "JEANS-32")])
    assert status == 200
    assert body == {"items": [{"sku": "TEE-M", "available": 13, "state": "in_stock"},
                              {"sku": "JEANS-32", "available": 0, "state": "out_of_stock"}], "unknown": []}


async def test_reserved_and_safety_stock_are_not_sellable(channel: Channel) -> None:
    await channel.receive("TEE-M", "wh-1", 10)
    status, _, _ = await channel.inventory.put("/v1/stock/TEE-M/locations/wh-1/safety-stock",
                                               json={"safety_stock": 4})
    assert status == 200
    assert await channel.available("TEE-M") == 6
    await channel.move("count", sku="TEE-M", location_id="wh-1", kind="count", qty=3)
    assert await channel.available("TEE-M") == 0


async def test_one_sku_shows_pickup_stores(channel: Channel) -> None:
    await channel.receive("JEANS-32", "store-a", 2)
    await channel.receive("JEANS-32", "store-c", 1)
    await channel.receive("JEANS-32", "wh-1", 5)
    await channel.settled()
    status, body, _ = await channel.ecommerce.get("/v1/availability/JEANS-32")
    assert status == 200, body
    assert (body["available"], body["ship_available"], body["state"]) == (5, 5, "in_stock")
    assert body["pickup"] == [{"location_id": "store-a", "name": "Soho", "available": 2},
                              {"location_id": "store-c", "name": "Brighton", "available": 1}]


async def test_unknown_skus_are_listed_apart_and_404_alone(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.get("/v1/availability", params=[("sku", "NOPE"), ("sku", "TEE-M")])
    assert status == 200
    assert body["unknown"] == ["NOPE"] and [i["sku"] for i in body["items"]] == ["TEE-M"]
    status, body, _ = await channel.ecommerce.get("/v1/availability/NOPE")
    assert status == 404


async def test_a_location_that_starts_shipping_counts_at_once(channel: Channel) -> None:
    await channel.receive("TEE-M", "store-a", 4)
    assert await channel.available("TEE-M") == 0
    status, _, _ = await channel.inventory.put("/v1/locations/store-a",
                                               json={**_location("store-a"), "ship": True})
    assert status == 200
    assert await channel.available("TEE-M") == 4


def _location(location_id: str) -> dict[str, Any]:
    from tests.services.ecommerce.conftest import LOCATIONS

    return dict(LOCATIONS[location_id])


async def test_absolute_and_percent_buffers_per_sku_override_the_default(channel: Channel) -> None:
    await channel.receive("TEE-M", "wh-1", 10)
    await channel.receive("JEANS-32", "wh-1", 10)
    status, body, _ = await channel.ecommerce.put("/v1/channel-rules", json={"buffer": {"kind": "absolute",
                                                                                          "value": 2}})
    assert status == 200, body
    assert await channel.available("TEE-M") == 8
    assert await channel.available("JEANS-32") == 8
    status, body, _ = await channel.ecommerce.put("/v1/channel-rules/JEANS-32",
                                                  json={"buffer": {"kind": "percent", "value": "25"}})
    assert status == 200, body
    assert await channel.available("JEANS-32") == 7  # 25% of 10 is 2.5 held back, rounded up to 3
    assert await channel.available("TEE-M") == 8
    status, body, _ = await channel.ecommerce.get("/v1/channel-rules")
    assert body["default"]["buffer"] == {"kind": "absolute", "value": "2"}
    assert [(r["sku"], r["buffer"]) for r in body["items"]] == [("JEANS-32", {"kind": "percent", "value": "25"})]
    status, _, _ = await channel.ecommerce.request("DELETE", "/v1/channel-rules/JEANS-32")
    assert status == 200
    assert await channel.available("JEANS-32") == 8
    await channel.ecommerce.put("/v1/channel-rules", json={"buffer": {"kind": "absolute", "value": 50}})
    assert await channel.available("TEE-M") == 0  # a buffer never makes availability negative


async def test_low_out_and_back_in_stock_events_follow_the_threshold(channel: Channel, pool: asyncpg.Pool) -> None:
    status, body, _ = await channel.ecommerce.put("/v1/channel-rules/TEE-M", json={"low_stock_threshold": 3})
    assert status == 200, body
    await channel.receive("TEE-M", "wh-1", 5)
    await channel.settled()
    await channel.move("a1", sku="TEE-M", location_id="wh-1", kind="adjustment", qty=-3)   # 2: low
    await channel.settled()
    await channel.move("a2", sku="TEE-M", location_id="wh-1", kind="adjustment", qty=-2)   # 0: out
    await channel.settled()
    await channel.move("a3", sku="TEE-M", location_id="wh-1", kind="adjustment", qty=9)    # 9: back, in stock
    await channel.settled()
    events = await availability_events(pool, "TEE-M")
    assert [(t, p["available"]) for t, p in events] == [
        ("availability.changed", 5), ("availability.back_in_stock", 5),
        ("availability.changed", 2), ("availability.low_stock", 2),
        ("availability.changed", 0), ("availability.out_of_stock", 0),
        ("availability.changed", 9), ("availability.back_in_stock", 9),
    ]
    assert events[2][1]["previous"] == 5 and events[2][1]["state"] == "low_stock"
