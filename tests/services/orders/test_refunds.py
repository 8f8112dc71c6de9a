"""Returns refund only what was paid: never an unpaid order's units, never more than the payment."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop

THREE_TEES = [{"sku": "TEE-M", "qty": 3, "unit_price": "19.90"}]


async def fulfilled(shop: Shop, key: str, *, pay: bool, **changes: Any) -> dict[str, Any]:
    status, order, _ = await shop.place(key, lines=THREE_TEES, **changes)
    assert status == 201, order
    if pay:
        assert (await shop.orders.post(f"/v1/orders/{order['id']}/pay"))[0] == 200
    status, order, _ = await shop.orders.post(f"/v1/orders/{order['id']}/fulfill")
    assert status == 200, order
    return order


async def give_back(shop: Shop, order: dict[str, Any], qty: int, key: str) -> tuple[int, Any]:
    body = {"lines": [{"sku": "TEE-M", "qty": qty}], "location_id": "store-a"}
    status, out, _ = await shop.orders.post(f"/v1/orders/{order['id']}/returns", json=body, idem=key)
    return status, out


async def test_an_unpaid_order_cannot_be_returned_for_money(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    order = await fulfilled(shop, "o", pay=False)
    sales_before = await shop.pool.fetchval("SELECT count(*) FROM orders.sales")
    status, out = await give_back(shop, order, 2, "r")
    assert_problem(status, out, 409, "order-not-paid")
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.sales") == sales_before
    assert await shop.level("TEE-M", "store-a") == (0, 0)
    _, again, _ = await shop.orders.get(f"/v1/orders/{order['id']}")
    assert again["lines"][0]["returned"] == 0
    await shop.consistent()


async def test_refunds_never_exceed_what_the_discounted_order_paid(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    # goods 59.70, discount 9.70, shipping 5.00: paid 55.00; returns give back goods net of the discount
    order = await fulfilled(shop, "o", pay=True, charges=[{"kind": "discount", "amount": "9.70"},
                                                          {"kind": "shipping", "amount": "5.00"}])
    assert order["total"] == "55.00"
    status, out = await give_back(shop, order, 1, "r1")
    assert status == 201, out
    assert out["sale"]["total"] == "-16.67" and out["sale"]["goods_amount"] == "-19.90"
    assert out["sale"]["discount"] == "-3.23"  # the share of the discount given back
    status, out = await give_back(shop, order, 2, "r2")
    assert status == 201, out
    assert out["sale"]["total"] == "-33.33"
    refunded = await shop.pool.fetchval("SELECT -sum(total) FROM orders.sales WHERE kind = 'return'")
    assert str(refunded) == "50.00"  # everything back: the goods' share of what was paid, shipping kept
    status, out = await give_back(shop, order, 1, "r3")
    assert_problem(status, out, 409, "illegal-transition")
    await shop.consistent()
