"""Sourcing reads the stock of eligible locations only (repository.read_stock), nearest first."""

from __future__ import annotations

from tests.services.orders.conftest import LONDON, Shop


async def test_only_eligible_locations_are_sourced(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-a", 50)  # nearest to London, but it does not ship
    await shop.receive("TEE-M", "wh-2", 3)
    await shop.receive("TEE-M", "wh-1", 3)
    status, order, _ = await shop.place("k1", lines=[{"sku": "TEE-M", "qty": 2, "unit_price": "19.90"}],
                                        fulfillment={"type": "ship", "ship_to": LONDON})
    assert status == 201, order
    assert [(a["location_id"], a["qty"]) for a in order["allocations"]] == [("wh-1", 2)]
    status, pickup, _ = await shop.place("k2", lines=[{"sku": "TEE-M", "qty": 5, "unit_price": "19.90"}],
                                         fulfillment={"type": "pickup", "location_id": "store-a"})
    assert status == 201, pickup
    assert [(a["location_id"], a["qty"]) for a in pickup["allocations"]] == [("store-a", 5)]
    await shop.consistent()
