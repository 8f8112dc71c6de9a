"""GET /v1/endless-aisle/{sku}: where else an item can be had, right now, from a store that has none."""

from __future__ import annotations

from tests.services.ecommerce.conftest import Channel


async def test_a_store_without_stock_learns_where_to_ship_from_and_where_to_pick_up(channel: Channel) -> None:
    await channel.receive("JEANS-32", "store-b", 2)   # Camden: ships and does pick-up, 3 km away
    await channel.receive("JEANS-32", "store-c", 5)   # Brighton: pick-up only, ~77 km away
    await channel.receive("JEANS-32", "wh-1", 9)      # the warehouse: ships, no pick-up
    status, body, _ = await channel.ecommerce.get("/v1/endless-aisle/JEANS-32",
                                                  params={"location_id": "store-a"})
    assert status == 200, body
    assert body["here"] == 0 and body["qty"] == 1
    assert [(o["location_id"], o["available"]) for o in body["ship_from"]] == [("store-b", 2), ("wh-1", 9)]
    assert [o["location_id"] for o in body["pickup_at"]] == ["store-b"]  # Brighton is past 50 km
    assert body["ship_from"][0]["distance_km"] < body["ship_from"][1]["distance_km"]


async def test_quantity_and_radius_narrow_the_answer(channel: Channel) -> None:
    await channel.receive("JEANS-32", "store-b", 2)
    await channel.receive("JEANS-32", "store-c", 5)
    status, body, _ = await channel.ecommerce.get("/v1/endless-aisle/JEANS-32", params={
        "location_id": "store-a", "qty": 3, "radius_km": 100})
    assert status == 200, body
    assert body["ship_from"] == []
    assert [(o["location_id"], o["available"]) for o in body["pickup_at"]] == [("store-c", 5)]


async def test_from_a_point_and_the_origin_store_is_never_suggested(channel: Channel) -> None:
    await channel.receive("TEE-M", "store-a", 1)
    await channel.receive("TEE-M", "store-b", 1)
    status, body, _ = await channel.ecommerce.get("/v1/endless-aisle/TEE-M", params={"lat": 51.51, "lon": -0.13})
    assert status == 200 and body["here"] is None
    assert [o["location_id"] for o in body["pickup_at"]] == ["store-a", "store-b"]
    status, body, _ = await channel.ecommerce.get("/v1/endless-aisle/TEE-M", params={"location_id": "store-a"})
    assert body["here"] == 1 and [o["location_id"] for o in body["pickup_at"]] == ["store-b"]


async def test_reserved_stock_is_not_offered(channel: Channel) -> None:
    await channel.receive("TEE-M", "store-b", 2)
    status, _, _ = await channel.inventory.put("/v1/stock/TEE-M/locations/store-b/safety-stock",
                                               json={"safety_stock": 2})
    assert status == 200
    status, body, _ = await channel.ecommerce.get("/v1/endless-aisle/TEE-M", params={"location_id": "store-a"})
    assert body["ship_from"] == [] and body["pickup_at"] == []
