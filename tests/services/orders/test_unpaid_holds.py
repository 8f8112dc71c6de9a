"""Store-channel orders hold stock for a while, not forever, and one store key holds only so many
units unpaid, however many orders it sends at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.orders.domain import UnpaidUnitsLimit
from services.orders.placement import Placement, place_order
from services.orders.repository import LocationDirectory
from services.orders.schemas import OrderIn
from services.orders.sourcing import POLICIES
from services.orders.use_cases import expire_reservations
from shared.auth import Principal
from shared.db import transaction
from shared.settings import Settings
from tests.conftest import ServiceFactory, assert_problem
from tests.services.orders.conftest import Shop

CAP = 5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_unpaid_units_per_store_key": CAP})


def aisle(qty: int = 1) -> dict[str, Any]:
    return {"channel": "store", "lines": [{"sku": "TEE-M", "qty": qty}], "fulfillment": {"type": "ship"}}


async def test_a_store_order_has_a_clock_and_the_sweeper_releases_it(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    store = shop.orders.as_key(await make_key("store", "store-a"))
    before = datetime.now(UTC)
    status, body, _ = await shop.place("a", api=store, **aisle(2))
    assert status == 201, body
    until = datetime.fromisoformat(body["reserved_until"])
    assert before + timedelta(seconds=900) <= until <= datetime.now(UTC) + timedelta(seconds=900)
    assert await expire_reservations(shop.pool) == 0
    assert await expire_reservations(shop.pool, now=until + timedelta(seconds=1)) == 1
    _, body, _ = await shop.orders.get(f"/v1/orders/{body['id']}")
    assert body["status"] == "cancelled" and body["history"][-1]["event"] == "expired"
    assert await shop.level("TEE-M", "wh-1") == (5, 0)
    await shop.consistent()


async def test_a_store_key_holds_only_so_many_units_unpaid(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "wh-1", 50)
    store = shop.orders.as_key(await make_key("store", "store-a"))
    status, first, _ = await shop.place("a", api=store, **aisle(3))
    assert status == 201, first
    status, body, _ = await shop.place("b", api=store, **aisle(3))
    assert_problem(status, body, 409, "unpaid-units-limit")
    assert (body["held"], body["limit"], body["requested"]) == (3, CAP, 3)
    assert await shop.level("TEE-M", "wh-1") == (50, 3)
    # paid units are no longer held: the key may place again; another store key has its own allowance
    assert (await shop.orders.post(f"/v1/orders/{first['id']}/pay"))[0] == 200
    status, body, _ = await shop.place("b", api=store, **aisle(3))
    assert status == 201, body
    other = shop.orders.as_key(await make_key("store", "store-a"))
    assert (await shop.place("c", api=other, **aisle(CAP)))[0] == 201
    # the shop's key places many online orders: it is not capped
    shop_key = shop.orders.as_key(await make_key("shop"))
    for i in range(3):
        status, body, _ = await shop.place(f"s{i}", api=shop_key, lines=[{"sku": "TEE-M", "qty": 4,
                                                                          "unit_price": "19.90"}])
        assert status == 201, body
    await shop.consistent()


async def test_concurrent_orders_of_one_key_never_hold_more_than_the_cap(shop: Shop, make_key: Any,
                                                                           service: ServiceFactory) -> None:
    await shop.receive("TEE-M", "wh-1", 100)
    key = await make_key("store", "store-a")
    # two replicas of the orders service: the orders of one key arrive in groups of both at once
    replicas = [shop.orders.as_key(key), (await service("orders")).as_key(key)]
    results = await asyncio.gather(*(shop.place(f"k{i}", api=replicas[i % 2], **aisle(1)) for i in range(16)))
    placed = [r for r in results if r[0] == 201]
    refused = [r for r in results if r[0] != 201]
    assert len(placed) == CAP, [r[1] for r in results]
    for status, body, _ in refused:
        assert_problem(status, body, 409, "unpaid-units-limit")
    assert await shop.level("TEE-M", "wh-1") == (100, CAP)
    assert await shop.pool.fetchval("SELECT count(*) FROM core.idempotency_keys") == CAP
    await shop.consistent()


async def test_the_one_order_path_keeps_the_cap_under_concurrency_too(shop: Shop) -> None:
    # the path e-commerce, and a group's leftovers, place through: one transaction per order
    await shop.receive("TEE-M", "wh-1", 100)
    placement = Placement(POLICIES["fewest_shipments"], LocationDirectory(), 1800, max_unpaid_units_per_store_key=CAP)
    store = Principal(4242, "store", "store-a")
    body = OrderIn.model_validate({**aisle(1), "currency": "EUR"})

    async def place_one() -> str:
        async with transaction(shop.pool) as conn:
            return (await place_order(conn, body, store, placement)).id

    results = await asyncio.gather(*(place_one() for _ in range(9)), return_exceptions=True)
    assert len([r for r in results if isinstance(r, str)]) == CAP, results
    assert all(isinstance(r, UnpaidUnitsLimit) for r in results if not isinstance(r, str))
    assert await shop.level("TEE-M", "wh-1") == (100, CAP)
    await shop.consistent()
