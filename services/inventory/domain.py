"""Inventory rules, free of I/O: what a movement does to a level, distances, availability."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import field_error

EARTH_RADIUS_KM = 6371.0088  # mean radius; inventory.distance_km uses the same
MAX_MOVEMENT_QTY = 1_000_000  # one movement of more than a million units is a typo, not a delivery


@dataclass(frozen=True)
class Deltas:
    on_hand: int
    reserved: int = 0


def available(on_hand: int, reserved: int, safety_stock: int) -> int:
    return max(0, on_hand - reserved - safety_stock)


def check_movement(kind: str, qty: int, location_id: str, to_location_id: str | None) -> None:
    """Refuse quantities that make no sense for the kind, naming the field."""
    if abs(qty) > MAX_MOVEMENT_QTY:
        raise field_error("qty", f"at most {MAX_MOVEMENT_QTY} units in one movement")
    if kind in ("receipt", "transfer") and qty <= 0:
        raise field_error("qty", f"a {kind} moves a positive quantity")
    if kind == "adjustment" and qty == 0:
        raise field_error("qty", "an adjustment of 0 changes nothing")
    if kind == "count" and qty < 0:
        raise field_error("qty", "a count cannot be negative")
    if kind == "transfer":
        if to_location_id is None:
            raise field_error("to_location_id", "a transfer needs a destination")
        if to_location_id == location_id:
            raise field_error("to_location_id", "must differ from location_id")
    elif to_location_id is not None:
        raise field_error("to_location_id", "only a transfer has a destination")


def movement_deltas(kind: str, qty: int, on_hand: int) -> Deltas:
    """On-hand change at the source location; `on_hand` is the current level (used by a count)."""
    if kind == "receipt":
        return Deltas(qty)
    if kind == "adjustment":
        return Deltas(qty)
    if kind == "count":
        return Deltas(qty - on_hand)
    if kind == "transfer":
        return Deltas(-qty)
    raise ValueError(f"not a client movement kind: {kind}")


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True)
class BoundingBox:
    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float


def bounding_box(lat: float, lon: float, radius_km: float) -> BoundingBox:
    """A lat/lon box containing every point within `radius_km` (a cheap index prefilter).

    Near the poles or across the antimeridian the box widens to all longitudes rather than wrap,
    which stays correct (the exact distance filter follows) at the cost of a wider scan.
    """
    dlat = math.degrees(radius_km / EARTH_RADIUS_KM)
    lat_min, lat_max = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    if lat_min <= -90.0 or lat_max >= 90.0:
        return BoundingBox(lat_min, lat_max, -180.0, 180.0)
    dlon = math.degrees(math.asin(min(1.0, math.sin(radius_km / EARTH_RADIUS_KM) / math.cos(math.radians(lat)))))
    lon_min, lon_max = lon - dlon, lon + dlon
    if lon_min < -180.0 or lon_max > 180.0 or dlon >= 90.0:
        return BoundingBox(lat_min, lat_max, -180.0, 180.0)
    return BoundingBox(lat_min, lat_max, lon_min, lon_max)
