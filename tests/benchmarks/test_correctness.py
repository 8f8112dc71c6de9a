"""The benchmarks' after-load check (benchmarks/scenarios/correctness.py) finds what it must."""

from __future__ import annotations

import uuid

import asyncpg

from benchmarks.scenarios.correctness import _check, broken
from services.inventory import repository as inventory
from tests.conftest import ServiceFactory
from tests.services.orders.conftest import LOCATIONS, SKUS, order_body


async def test_lost_orders_and_stock_off_its_movements_are_reported(service: ServiceFactory, pool: asyncpg.Pool,
                                                                     database_url: str) -> None:
    inv = await service("inventory")
    assert (await inv.put("/v1/locations/wh-1", json=LOCATIONS["wh-1"]))[0] == 201
    assert (await inv.put("/v1/skus/TEE-M", json=SKUS["TEE-M"]))[0] == 201
    async with pool.acquire() as conn:
        await inventory.apply_movement(conn, "TEE-M", "wh-1", "receipt", 5, actor="test")
    status, order, _ = await (await service("orders")).post("/v1/orders", json=order_body(), idem="k1")
    assert status == 201, order

    clean = await _check(database_url, [order["id"], order["id"]])  # a replay acknowledges the same order
    assert clean == {"acknowledged_orders": 1, "lost_orders": 0, "levels_off_movements": 0,
                     "reserved_off_open_orders": 0, "oversold_levels": 0}
    assert broken(clean) == []

    lost = await _check(database_url, [order["id"], str(uuid.uuid4())])
    assert lost["lost_orders"] == 1 and broken(lost) == ["lost_orders = 1"]

    # A level changed behind the movements' back, with more reserved than any order holds and than it
    # has (the schema forbids that; this test's own database lets it, to see the check catch it).
    await pool.execute("ALTER TABLE inventory.stock_levels DROP CONSTRAINT stock_within_bounds")
    await pool.execute("UPDATE inventory.stock_levels SET on_hand = 1, reserved = 1 + reserved"
                       " WHERE sku = 'TEE-M' AND location_id = 'wh-1'")
    drifted = await _check(database_url, [order["id"]])
    assert drifted["levels_off_movements"] == 1
    assert drifted["reserved_off_open_orders"] == 1
    assert drifted["oversold_levels"] == 1  # reserved 2 > on hand 1
