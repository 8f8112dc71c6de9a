"""Sourcing reads stock filtered in SQL for a few eligible sites, or all of a SKU's stock for many
(repository.read_stock); either way only eligible locations are ever allocated."""

from __future__ import annotations

import pytest

from services.orders import repository as repo
from tests.services.orders.conftest import LONDON, Shop


@pytest.mark.parametrize("filter_up_to", [0, 100], ids=["all-stock-read", "filtered-read"])
async def test_only_eligible_locations_are_sourced_whichever_read(shop: Shop, monkeypatch: pytest.MonkeyPatch,
                                                                   filter_up_to: int) -> None:
    monkeypatch.setattr(repo, "SITES_WORTH_FILTERING", filter_up_to)
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
