from __future__ import annotations

from tests.conftest import assert_problem
from tests.services.orders.conftest import LONDON, MANCHESTER, Shop


async def test_ship_order_reserves_at_one_location_and_prices_exactly(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    await shop.receive("JEANS-32", "wh-1", 5)
    status, body, _ = await shop.place(
        "o1",
        lines=[{"sku": "TEE-M", "qty": 3, "unit_price": "19.90"}, {"sku": "JEANS-32", "qty": 1, "unit_price": "79"}],
        charges=[{"kind": "shipping", "amount": "4.95"}, {"kind": "tax", "amount": "10.10"},
                 {"kind": "discount", "amount": "5.00"}],
    )
    assert status == 201, body
    assert body["status"] == "placed"
    assert body["total"] == "148.75"  # 59.70 + 79.00 + 4.95 + 10.10 - 5.00
    assert body["lines_total"] == "138.70"
    assert sorted((a["sku"], a["location_id"], a["qty"]) for a in body["allocations"]) == [
        ("JEANS-32", "wh-1", 1), ("TEE-M", "wh-1", 3)]
    assert body["reserved_until"] is not None
    assert await shop.level("TEE-M", "wh-1") == (5, 3)
    status, got, _ = await shop.orders.get(f"/v1/orders/{body['id']}")
    assert status == 200
    assert got["total"] == "148.75" and [h["event"] for h in got["history"]] == ["placed"]
    topics = [r["topic"] for r in await shop.pool.fetch("SELECT topic FROM core.events ORDER BY id")]
    assert topics.count("order.placed") == 1 and topics.count("stock.changed") >= 2
    await shop.consistent()


async def test_sourcing_prefers_one_shipment_then_nearest_then_priority(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    await shop.receive("TEE-M", "wh-2", 10)
    await shop.receive("TEE-M", "store-b", 10)
    await shop.receive("CAP", "wh-2", 10)
    # nearest to Manchester
    _, body, _ = await shop.place("near", fulfillment={"type": "ship", "ship_to": MANCHESTER})
    assert [a["location_id"] for a in body["allocations"]] == ["wh-2"]
    # Camden is nearer to central London than Dartford
    _, body, _ = await shop.place("london", fulfillment={"type": "ship", "ship_to": LONDON})
    assert [a["location_id"] for a in body["allocations"]] == ["store-b"]
    # no ship_to: priority (warehouses 10 before stores 100), then id
    _, body, _ = await shop.place("prio", fulfillment={"type": "ship"})
    assert [a["location_id"] for a in body["allocations"]] == ["wh-1"]
    # one shipment from far away beats two from nearby
    _, body, _ = await shop.place("one", lines=[{"sku": "TEE-M", "qty": 1, "unit_price": "19.90"},
                                                {"sku": "CAP", "qty": 1, "unit_price": "9.50"}])
    assert {a["location_id"] for a in body["allocations"]} == {"wh-2"}
    await shop.consistent()


async def test_a_line_is_split_only_when_no_location_can_fill_it(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 4)
    await shop.receive("TEE-M", "store-b", 3)
    status, body, _ = await shop.place("s", lines=[{"sku": "TEE-M", "qty": 6, "unit_price": "19.90"}])
    assert status == 201, body
    assert sorted((a["location_id"], a["qty"]) for a in body["allocations"]) == [("store-b", 2), ("wh-1", 4)] or \
        sorted((a["location_id"], a["qty"]) for a in body["allocations"]) == [("store-b", 3), ("wh-1", 3)]
    assert sum(a["qty"] for a in body["allocations"]) == 6
    await shop.consistent()


async def test_pickup_reserves_at_the_pickup_store_only(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-a", 1)
    await shop.receive("TEE-M", "wh-1", 50)
    status, body, _ = await shop.place("p1", fulfillment={"type": "pickup", "location_id": "store-a"})
    assert status == 201 and body["allocations"] == [
        {"sku": "TEE-M", "location_id": "store-a", "qty": 1, "fulfilled": 0, "cancelled": 0, "open": 1}]
    status, body, _ = await shop.place("p2", fulfillment={"type": "pickup", "location_id": "store-a"})
    assert_problem(status, body, 409, "insufficient-stock")
    assert body["skus"] == ["TEE-M"]
    status, body, _ = await shop.place("p3", fulfillment={"type": "pickup", "location_id": "wh-1"})
    assert_problem(status, body, 422, field="fulfillment.location_id")
    assert await shop.level("TEE-M", "wh-1") == (50, 0)


async def test_short_line_reserves_nothing_and_names_the_short_skus(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    await shop.receive("JEANS-32", "wh-1", 1)
    status, body, _ = await shop.place("x", lines=[
        {"sku": "TEE-M", "qty": 2, "unit_price": "19.90"}, {"sku": "JEANS-32", "qty": 2, "unit_price": "79.00"},
        {"sku": "CAP", "qty": 1, "unit_price": "9.50"}])
    assert_problem(status, body, 409, "insufficient-stock")
    assert body["skus"] == ["CAP", "JEANS-32"]
    assert await shop.level("TEE-M", "wh-1") == (5, 0)
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.orders") == 0
    assert await shop.pool.fetchval("SELECT count(*) FROM core.events WHERE topic LIKE 'order.%'") == 0
    await shop.consistent()


async def test_safety_stock_is_not_sold_online(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 3)
    status, _, _ = await shop.inventory.put("/v1/stock/TEE-M/locations/wh-1/safety-stock", json={"safety_stock": 2})
    assert status == 200
    assert (await shop.place("a"))[0] == 201
    assert_problem(*(await shop.place("b"))[:2], 409, "insufficient-stock")


async def test_same_key_replays_and_another_body_conflicts(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    first = await shop.place("k")
    again = await shop.place("k")
    assert first[0] == again[0] == 201 and first[1] == again[1]
    assert again[2].headers["Idempotent-Replayed"] == "true"
    status, body, _ = await shop.place("k", lines=[{"sku": "TEE-M", "qty": 2, "unit_price": "19.90"}])
    assert_problem(status, body, 409, "idempotency-key-reused")
    assert await shop.level("TEE-M", "wh-1") == (5, 1)


async def test_external_id_is_unique_per_channel(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    assert (await shop.place("a", external_id="shop-1001"))[0] == 201
    status, body, _ = await shop.place("b", external_id="shop-1001")
    assert_problem(status, body, 409)
    assert await shop.level("TEE-M", "wh-1") == (5, 1)


async def test_currency_must_match_the_skus(shop: Shop) -> None:
    await shop.receive("MUG-US", "wh-1", 5)
    status, body, _ = await shop.place("usd", lines=[{"sku": "MUG-US", "qty": 1, "unit_price": "12.00"}])
    assert_problem(status, body, 422, field="currency")
    status, body, _ = await shop.place("usd2", currency="USD", lines=[{"sku": "MUG-US", "qty": 1, "unit_price": "12"}])
    assert status == 201 and body["total"] == "12.00"


async def test_endless_aisle_store_sells_what_the_warehouse_ships(shop: Shop, make_key) -> None:  # type: ignore[no-untyped-def]
    await shop.receive("JEANS-32", "wh-1", 2)
    store = shop.orders.as_key(await make_key("store", "store-a"))
    status, body, _ = await shop.place("aisle", api=store, channel="store",
                                       lines=[{"sku": "JEANS-32", "qty": 1, "unit_price": "79.00"}])
    assert status == 201, body
    assert body["selling_location_id"] == "store-a" and body["reserved_until"] is not None
    assert body["allocations"][0]["location_id"] == "wh-1"
    status, body, _ = await shop.orders.post(f"/v1/orders/{body['id']}/fulfill")
    assert status == 200 and body["status"] == "fulfilled"
    sale = await shop.pool.fetchrow("SELECT * FROM orders.sales")
    assert (sale["channel"], sale["location_id"], str(sale["total"])) == ("store", "store-a", "79.00")
    assert sale["lines"][0]["location_id"] == "wh-1"
    await shop.consistent()
