"""Bulk-seeded stock reaches the availability projection without a rebuild."""

from __future__ import annotations

import asyncio

import asyncpg

from services.inventory import use_cases as inventory
from tests.conftest import ServiceFactory


async def test_seeding_after_start_makes_stock_sellable_online(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    ecommerce = await service("ecommerce")
    await inventory.seed(pool, stores=3, skus=5)
    expected = await pool.fetchval(
        "SELECT sum(greatest(0, s.on_hand - s.reserved - s.safety_stock)) FROM inventory.stock_levels s"
        " JOIN inventory.locations l ON l.id = s.location_id WHERE l.ship AND s.sku = 'SKU-000001'"
    )
    assert expected > 0
    for _ in range(100):
        status, body, _ = await ecommerce.get("/v1/availability?sku=SKU-000001")
        if status == 200 and body["items"] and body["items"][0]["available"] == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"availability never reached {expected}: {body}")
