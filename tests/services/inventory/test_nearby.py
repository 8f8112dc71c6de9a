"""Nearby stock: great-circle distance, radius and minimum-available filters, nearest first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.inventory.domain import bounding_box, great_circle_km
from tests.conftest import Api
from tests.services.inventory.conftest import LOCATIONS, move


async def stock_everywhere(api: Api) -> None:
    for i, (loc, qty) in enumerate({"store-a": 5, "store-b": 1, "store-c": 8, "wh-1": 50}.items()):
        await move(api, f"r{i}", sku="TEE-M", location_id=loc, kind="receipt", qty=qty)


async def test_nearest_first_from_a_point_with_radius(inventory: Api) -> None:
    await stock_everywhere(inventory)
    status, body, _ = await inventory.get("/v1/stock/TEE-M/nearby?lat=51.5136&lon=-0.1365&radius_km=40")
    assert status == 200, body
    assert [r["location_id"] for r in body["results"]] == ["store-a", "store-b", "wh-1"]  # Brighton is ~77 km
    distances = [r["distance_km"] for r in body["results"]]
    assert distances == sorted(distances)
    b = LOCATIONS["store-b"]
    assert abs(body["results"][1]["distance_km"] - great_circle_km(51.5136, -0.1365, b["lat"], b["lon"])) < 0.001


async def test_from_a_store_with_min_available(inventory: Api) -> None:
    await stock_everywhere(inventory)
    status, body, _ = await inventory.get("/v1/stock/TEE-M/nearby?location_id=store-b&min_available=2")
    assert status == 200
    assert [r["location_id"] for r in body["results"]] == ["store-a", "wh-1", "store-c"]
    assert all(r["available"] >= 2 for r in body["results"])


async def test_reserved_and_safety_stock_are_not_available(inventory: Api) -> None:
    await stock_everywhere(inventory)
    await inventory.put("/v1/stock/TEE-M/locations/store-a/safety-stock", json={"safety_stock": 5})
    status, body, _ = await inventory.get("/v1/stock/TEE-M/nearby?location_id=store-a&radius_km=10")
    assert [r["location_id"] for r in body["results"]] == ["store-b"]
    status, body, _ = await inventory.get("/v1/stock/TEE-M/nearby?location_id=store-a&radius_km=10&min_available=0")
    assert [(r["location_id"], r["available"]) for r in body["results"]] == [("store-a", 0), ("store-b", 1)]


async def test_limit(inventory: Api) -> None:
    await stock_everywhere(inventory)
    status, body, _ = await inventory.get("/v1/stock/TEE-M/nearby?lat=0&lon=0&limit=2")
    assert len(body["results"]) == 2


@given(lat=st.floats(-89, 89), lon=st.floats(-180, 180), radius=st.floats(0.1, 3000),
       bearing_lat=st.floats(-1, 1), bearing_lon=st.floats(-1, 1), scale=st.floats(0, 1))
def test_bounding_box_contains_every_point_within_the_radius(lat: float, lon: float, radius: float,
                                                             bearing_lat: float, bearing_lon: float,
                                                             scale: float) -> None:
    box = bounding_box(lat, lon, radius)
    # A candidate point near the origin; whenever it is inside the radius it must be inside the box.
    plat = max(-90.0, min(90.0, lat + bearing_lat * scale * 30))
    plon = lon + bearing_lon * scale * 60
    plon = (plon + 180) % 360 - 180
    if great_circle_km(lat, lon, plat, plon) <= radius:
        assert box.lat_min <= plat <= box.lat_max
        assert box.lon_min <= plon <= box.lon_max
