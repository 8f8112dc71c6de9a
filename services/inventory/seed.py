"""Demo data with real-looking coordinates: stores scattered around real city centres."""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

# (city, lat, lon, IANA zone): stores are scattered within ~25 km of these centres.
CITIES: tuple[tuple[str, float, float, str], ...] = (
    ("London", 51.5074, -0.1278, "Europe/London"), ("Manchester", 53.4808, -2.2426, "Europe/London"),
    ("Paris", 48.8566, 2.3522, "Europe/Paris"), ("Lyon", 45.7640, 4.8357, "Europe/Paris"),
    ("Berlin", 52.5200, 13.4050, "Europe/Berlin"), ("Munich", 48.1351, 11.5820, "Europe/Berlin"),
    ("Hamburg", 53.5511, 9.9937, "Europe/Berlin"), ("Madrid", 40.4168, -3.7038, "Europe/Madrid"),
    ("Barcelona", 41.3874, 2.1686, "Europe/Madrid"), ("Milan", 45.4642, 9.1900, "Europe/Rome"),
    ("Rome", 41.9028, 12.4964, "Europe/Rome"), ("Amsterdam", 52.3676, 4.9041, "Europe/Amsterdam"),
    ("Brussels", 50.8503, 4.3517, "Europe/Brussels"), ("Vienna", 48.2082, 16.3738, "Europe/Vienna"),
    ("Zurich", 47.3769, 8.5417, "Europe/Zurich"), ("Stockholm", 59.3293, 18.0686, "Europe/Stockholm"),
    ("Copenhagen", 55.6761, 12.5683, "Europe/Copenhagen"), ("Warsaw", 52.2297, 21.0122, "Europe/Warsaw"),
    ("Prague", 50.0755, 14.4378, "Europe/Prague"), ("Lisbon", 38.7223, -9.1393, "Europe/Lisbon"),
    ("Dublin", 53.3498, -6.2603, "Europe/Dublin"), ("New York", 40.7128, -74.0060, "America/New_York"),
    ("Chicago", 41.8781, -87.6298, "America/Chicago"), ("Los Angeles", 34.0522, -118.2437, "America/Los_Angeles"),
    ("Toronto", 43.6532, -79.3832, "America/Toronto"), ("São Paulo", -23.5505, -46.6333, "America/Sao_Paulo"),
    ("Sydney", -33.8688, 151.2093, "Australia/Sydney"), ("Tokyo", 35.6762, 139.6503, "Asia/Tokyo"),
)
GARMENTS = ("Shirt", "Tee", "Jeans", "Chinos", "Jacket", "Hoodie", "Dress", "Skirt", "Sweater", "Coat",
            "Sneakers", "Boots", "Scarf", "Cap", "Socks", "Polo", "Blazer", "Shorts")
MATERIALS = ("Linen", "Cotton", "Wool", "Denim", "Merino", "Canvas", "Leather", "Silk", "Fleece")
COLOURS = ("Black", "White", "Navy", "Olive", "Sand", "Grey", "Red", "Blue", "Green", "Rust")
SIZES = ("XS", "S", "M", "L", "XL")


@dataclass(frozen=True)
class SeedLocation:
    id: str
    name: str
    kind: str
    lat: float
    lon: float
    ship: bool
    pickup: bool
    timezone: str
    priority: int


@dataclass(frozen=True)
class SeedSku:
    sku: str
    name: str
    price: Decimal
    currency: str


def demo_locations(stores: int, rng: random.Random) -> list[SeedLocation]:
    """`stores` stores plus one warehouse per 100 stores (at least one), near real cities."""
    out: list[SeedLocation] = []
    for i in range(stores):
        city, lat, lon, tz = CITIES[i % len(CITIES)]
        out.append(SeedLocation(
            id=f"store-{i + 1:04d}", name=f"{city} #{i // len(CITIES) + 1}", kind="store",
            lat=round(lat + rng.uniform(-0.22, 0.22), 6), lon=round(lon + rng.uniform(-0.3, 0.3), 6),
            ship=rng.random() < 0.3, pickup=True, timezone=tz, priority=100,
        ))
    for j in range(max(1, stores // 100)):
        city, lat, lon, tz = CITIES[j % len(CITIES)]
        out.append(SeedLocation(
            id=f"wh-{j + 1:02d}", name=f"{city} distribution centre", kind="warehouse",
            lat=round(lat + rng.uniform(-0.5, 0.5), 6), lon=round(lon + rng.uniform(-0.5, 0.5), 6),
            ship=True, pickup=False, timezone=tz, priority=10,
        ))
    return out


def demo_skus(count: int, rng: random.Random) -> list[SeedSku]:
    out = []
    for i in range(count):
        name = f"{rng.choice(MATERIALS)} {rng.choice(GARMENTS)} {rng.choice(COLOURS)} {SIZES[i % len(SIZES)]}"
        price = Decimal(rng.randrange(499, 19999)) / 100
        out.append(SeedSku(sku=f"SKU-{i + 1:06d}", name=name, price=price, currency="EUR"))
    return out
