"""Prices come from the catalogue for store orders and till sales; a different price is an override
that needs a reason and a role allowed to give it (a store only within its discount cap)."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop
from tests.services.orders.test_till import sale


def line(sku: str = "JEANS-32", qty: int = 1, **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "qty": qty, **extra}


async def store_key(shop: Shop, make_key: Any, location_id: str = "store-a") -> Any:
    return shop.orders.as_key(await make_key("store", location_id))


async def nothing_happened(shop: Shop) -> None:
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.orders") == 0
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.sales") == 0
    await shop.consistent()


async def test_a_store_key_cannot_reserve_at_a_price_it_chose(shop: Shop, make_key: Any) -> None:
    await shop.receive("JEANS-32", "wh-1", 40)
    store = await store_key(shop, make_key)
    for extra in ({}, {"price_override": {"reason": "friend of the manager"}}):
        status, body, _ = await shop.place("cheap", api=store, channel="store",
                                           lines=[line(qty=36, unit_price="0.01", **extra)])
        assert_problem(status, body, 403, "price-override-forbidden", field="lines.0.unit_price")
    assert await shop.level("JEANS-32", "wh-1") == (40, 0)
    await nothing_happened(shop)


async def test_a_till_cannot_ring_up_goods_at_a_price_it_chose(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "store-ny", 3)
    await shop.receive("CAP", "store-ny", 1)
    till = await store_key(shop, make_key, "store-ny")
    cheap = sale(lines=[line("TEE-M", 2, unit_price="0.02"), line("CAP", 1, unit_price="0.01")],
                 tenders=[{"kind": "cash", "amount": "0.05"}])
    status, body, _ = await till.post("/v1/pos/sales", json=cheap, idem="t")
    assert_problem(status, body, 403, "price-override-forbidden", field="lines.0.unit_price")
    # nor through an order-level discount past the cap
    status, body, _ = await till.post("/v1/pos/sales", idem="t2", json=sale(
        charges=[{"kind": "discount", "amount": "49.25"}], tenders=[{"kind": "cash", "amount": "0.05"}]))
    assert_problem(status, body, 403, "price-override-forbidden", field="charges")
    assert await shop.level("TEE-M", "store-ny") == (3, 0)
    await nothing_happened(shop)


async def test_a_different_price_without_a_reason_is_422_naming_the_line(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-ny", 3)
    await shop.receive("CAP", "store-ny", 1)
    status, body, _ = await shop.orders.post("/v1/pos/sales", idem="t", json=sale(
        lines=[line("TEE-M", 2, unit_price="19.90"), line("CAP", 1, unit_price="5.00")],
        tenders=[{"kind": "cash", "amount": "44.80"}]))
    assert_problem(status, body, 422, field="lines.1.price_override")
    status, body, _ = await shop.place("o", channel="store", selling_location_id="store-a",
                                       lines=[line("TEE-M", unit_price="25.00")])  # above catalogue too
    assert_problem(status, body, 422, field="lines.0.price_override")
    status, body, _ = await shop.place("o2", channel="store", selling_location_id="store-a",
                                       lines=[line("TEE-M", price_override={"reason": "damaged"})])
    assert_problem(status, body, 422, field="lines.0.price_override")  # an override without its price
    await nothing_happened(shop)


async def test_a_line_without_a_price_takes_the_catalogue_price(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "store-ny", 3)
    await shop.receive("CAP", "store-ny", 1)
    await shop.receive("JEANS-32", "wh-1", 1)
    till = await store_key(shop, make_key, "store-ny")
    status, body, _ = await till.post("/v1/pos/sales", idem="t", json=sale(
        lines=[line("TEE-M", 2), line("CAP", 1, unit_price="9.50")]))  # the catalogue price as sent still works
    assert status == 201, body
    assert body["total"] == "49.30"
    assert [(ln["unit_price"], ln["catalogue_price"], ln["price_source"]) for ln in body["lines"]] == [
        ("19.90", "19.90", "catalogue"), ("9.50", "9.50", "catalogue")]
    store = await store_key(shop, make_key)
    status, body, _ = await shop.place("aisle", api=store, channel="store", lines=[line()])
    assert status == 201, body
    assert body["total"] == "79.00" and body["lines"][0]["price_source"] == "catalogue"


async def test_a_store_discount_within_the_cap_is_recorded_with_reason_and_who(shop: Shop, make_key: Any) -> None:
    await shop.receive("JEANS-32", "wh-1", 2)
    store = await store_key(shop, make_key)
    status, body, _ = await shop.place("o", api=store, channel="store", lines=[
        line(unit_price="63.20", price_override={"reason": "price match"})])  # 20 % off 79.00
    assert status == 201, body
    ln = body["lines"][0]
    assert (ln["unit_price"], ln["catalogue_price"], ln["price_source"]) == ("63.20", "79.00", "override")
    assert ln["price_override"]["reason"] == "price match" and ln["price_override"]["by"].startswith("store:")
    status, again, _ = await shop.orders.get(f"/v1/orders/{body['id']}")
    assert again["lines"][0]["price_override"] == ln["price_override"]
    status, _, _ = await shop.orders.post(f"/v1/orders/{body['id']}/pay")
    status, _, _ = await shop.orders.post(f"/v1/orders/{body['id']}/fulfill")
    assert status == 200
    sale_line = (await shop.pool.fetchval("SELECT lines FROM orders.sales"))[0]
    assert sale_line["price_source"] == "override" and sale_line["price_override"]["reason"] == "price match"
    assert str(sale_line["catalogue_price"]) == "79.00" and str(sale_line["unit_price"]) == "63.20"
    # 21 % off is past the store's cap; above the catalogue is not a store's to decide
    for price in ("62.40", "80.00"):
        status, body, _ = await shop.place(f"o{price}", api=store, channel="store", lines=[
            line(unit_price=price, price_override={"reason": "price match"})])
        assert_problem(status, body, 403, "price-override-forbidden", field="lines.0.unit_price")


async def test_admin_and_ops_override_any_price_with_a_reason(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "store-ny", 5)
    await shop.receive("CAP", "store-ny", 5)
    ops = shop.orders.as_key(await make_key("ops"))
    for api, key in ((shop.orders, "a"), (ops, "b")):
        status, body, _ = await api.post("/v1/pos/sales", idem=key, json=sale(
            lines=[line("TEE-M", 2, unit_price="1.00", price_override={"reason": "staff sale"}),
                   line("CAP", 1, unit_price="12.00", price_override={"reason": "old tag"})],
            tenders=[{"kind": "cash", "amount": "14.00"}]))
        assert status == 201, body
        assert [ln["price_source"] for ln in body["lines"]] == ["override", "override"]


async def test_an_online_order_keeps_the_channel_price_beside_the_catalogue_price(shop: Shop, make_key: Any) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    shop_key = shop.orders.as_key(await make_key("shop"))
    status, body, _ = await shop.place("promo", api=shop_key, lines=[line("TEE-M", 2, unit_price="9.95")])
    assert status == 201, body
    assert body["total"] == "19.90"
    ln = body["lines"][0]
    assert (ln["unit_price"], ln["catalogue_price"], ln["price_source"]) == ("9.95", "19.90", "channel")
    status, body, _ = await shop.place("full", api=shop_key, lines=[line("TEE-M", 1, unit_price="19.90")])
    assert status == 201 and body["lines"][0]["price_source"] == "catalogue"
