from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.orders.conftest import Shop

TWO_LINES = [{"sku": "TEE-M", "qty": 3, "unit_price": "19.90"}, {"sku": "CAP", "qty": 2, "unit_price": "9.50"}]


async def placed(shop: Shop, key: str = "o", **changes: Any) -> dict[str, Any]:
    status, body, _ = await shop.place(key, **changes)
    assert status == 201, body
    return body


async def act(shop: Shop, order: dict[str, Any], action: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    status, out, _ = await shop.orders.post(f"/v1/orders/{order['id']}/{action}", json=body, **kw)
    return status, out


async def test_pay_fulfil_complete_with_history_sales_and_events(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    await shop.receive("CAP", "wh-1", 10)
    order = await placed(shop, lines=TWO_LINES, charges=[{"kind": "shipping", "amount": "3.00"}])
    status, body = await act(shop, order, "pay", {"amount": "81.70", "provider": "adyen", "reference": "psp-1"})
    assert status == 200 and body["status"] == "paid" and body["reserved_until"] is None and body["paid_at"]
    status, body = await act(shop, order, "fulfill")
    assert status == 200 and body["status"] == "fulfilled", body
    assert await shop.level("TEE-M", "wh-1") == (7, 0) and await shop.level("CAP", "wh-1") == (8, 0)
    status, body = await act(shop, order, "complete")
    assert status == 200 and body["status"] == "completed"
    assert [(h["event"], h["status"]) for h in body["history"]] == [
        ("placed", "placed"), ("paid", "paid"), ("fulfilled", "fulfilled"), ("completed", "completed")]
    sale = await shop.pool.fetchrow("SELECT * FROM orders.sales")
    assert (sale["kind"], sale["channel"], sale["location_id"]) == ("fulfillment", "online", "wh-1")
    assert (str(sale["goods_amount"]), str(sale["shipping"]), str(sale["total"])) == ("78.70", "3.00", "81.70")
    topics = [r["topic"] for r in await shop.pool.fetch(
        "SELECT topic FROM core.events WHERE topic LIKE 'order.%' OR topic LIKE 'sale.%' ORDER BY id")]
    assert topics == ["order.placed", "order.paid", "sale.recorded", "order.fulfilled", "order.completed"]
    await shop.consistent()


async def test_partial_fulfilment_and_partial_cancellation_per_line(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 10)
    await shop.receive("CAP", "wh-1", 10)
    order = await placed(shop, lines=TWO_LINES, charges=[{"kind": "shipping", "amount": "3.00"}])
    status, body = await act(shop, order, "fulfill", {"lines": [{"sku": "TEE-M", "qty": 2}]}, idem="f1")
    assert status == 200 and body["status"] == "placed"
    assert body["lines"][0] == {"sku": "TEE-M", "qty": 3, "unit_price": "19.90", "amount": "59.70", "fulfilled": 2,
                                "cancelled": 0, "returned": 0, "open": 1, "catalogue_price": "19.90",
                                "price_source": "catalogue", "price_override": None}
    again = await act(shop, order, "fulfill", {"lines": [{"sku": "TEE-M", "qty": 2}]}, idem="f1")
    assert again == (status, body)  # a retried partial fulfilment with its key fulfils once
    assert await shop.level("TEE-M", "wh-1") == (8, 1)
    status, body = await act(shop, order, "cancel", {"lines": [{"sku": "CAP", "qty": 1}], "reason": "customer"})
    assert status == 200 and body["status"] == "placed" and body["lines"][1]["open"] == 1
    assert await shop.level("CAP", "wh-1") == (10, 1)
    status, body = await act(shop, order, "fulfill", {"lines": [{"sku": "TEE-M", "qty": 2}]})
    assert_problem(status, body, 409, "illegal-transition")
    status, body = await act(shop, order, "cancel")  # the rest: one TEE-M, one CAP
    assert status == 200 and body["status"] == "fulfilled"  # something was fulfilled, nothing is open
    assert [h["event"] for h in body["history"]] == [
        "placed", "partially_fulfilled", "partially_cancelled", "partially_cancelled"]
    assert await shop.level("TEE-M", "wh-1") == (8, 0) and await shop.level("CAP", "wh-1") == (10, 0)
    sales = await shop.pool.fetch("SELECT total, shipping FROM orders.sales")
    assert [(str(s["total"]), str(s["shipping"])) for s in sales] == [("42.80", "3.00")]
    await shop.consistent()


async def test_cancel_releases_everything_and_is_final(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 3)
    order = await placed(shop)
    status, body = await act(shop, order, "cancel")
    assert status == 200 and body["status"] == "cancelled"
    assert await shop.level("TEE-M", "wh-1") == (3, 0)
    assert await shop.pool.fetchval("SELECT count(*) FROM orders.sales") == 0
    await shop.consistent()


async def test_returns_restock_at_the_named_location_as_a_negative_sale(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 5)
    order = await placed(shop, lines=[{"sku": "TEE-M", "qty": 3, "unit_price": "19.90"}])
    await act(shop, order, "pay")  # only what was paid for is refunded (test_refunds.py)
    await act(shop, order, "fulfill")
    body = {"lines": [{"sku": "TEE-M", "qty": 2}], "location_id": "store-ny"}
    status, out, _ = await shop.orders.post(f"/v1/orders/{order['id']}/returns", json=body, idem="r1")
    assert status == 201, out
    assert out["sale"]["total"] == "-39.80" and out["sale"]["lines"][0]["qty"] == -2
    assert out["sale"]["location_id"] == "store-ny" and out["status"] == "fulfilled"
    replay = await shop.orders.post(f"/v1/orders/{order['id']}/returns", json=body, idem="r1")
    assert replay[0] == 201 and replay[1] == out
    assert await shop.level("TEE-M", "store-ny") == (2, 0) and await shop.level("TEE-M", "wh-1") == (2, 0)
    status, out, _ = await shop.orders.post(f"/v1/orders/{order['id']}/returns", json=body, idem="r2")
    assert_problem(status, out, 409, "illegal-transition")  # only one unit left to return
    day = await shop.pool.fetchval("SELECT business_day FROM orders.sales WHERE kind = 'return'")
    assert day == await shop.pool.fetchval("SELECT (now() AT TIME ZONE 'America/New_York')::date")
    assert await shop.pool.fetchval("SELECT sum(total)::text FROM orders.sales") == "19.90"
    await shop.consistent()


async def test_every_illegal_transition_is_a_409_and_changes_nothing(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 20)
    await shop.receive("TEE-M", "store-a", 5)
    ret = {"lines": [{"sku": "TEE-M", "qty": 1}], "location_id": "wh-1"}

    cancelled = await placed(shop, "c")
    await act(shop, cancelled, "cancel")
    paid = await placed(shop, "p")
    await act(shop, paid, "pay")
    unpaid_fulfilled = await placed(shop, "uf")
    await act(shop, unpaid_fulfilled, "fulfill")
    completed = await placed(shop, "done")
    await act(shop, completed, "pay")
    await act(shop, completed, "fulfill")
    await act(shop, completed, "complete")
    fresh = await placed(shop, "fresh")

    illegal = [
        (fresh, "complete", None), (fresh, "returns", ret),
        (paid, "pay", None), (paid, "complete", None),
        (unpaid_fulfilled, "fulfill", None), (unpaid_fulfilled, "cancel", None),
        (unpaid_fulfilled, "complete", None),  # not paid yet
        (cancelled, "pay", None), (cancelled, "fulfill", None), (cancelled, "cancel", None),
        (cancelled, "complete", None), (cancelled, "returns", ret),
        (completed, "pay", None), (completed, "fulfill", None), (completed, "cancel", None),
        (completed, "complete", None), (completed, "returns", ret),
    ]
    before = await shop.pool.fetchval("SELECT count(*) FROM core.events")
    for order, action, body in illegal:
        status, out, _ = await shop.orders.post(f"/v1/orders/{order['id']}/{action}", json=body, idem=f"{action}x")
        assert_problem(status, out, 409, "illegal-transition")
    assert await shop.pool.fetchval("SELECT count(*) FROM core.events") == before
    # pay at pick-up: a fulfilled, unpaid order may still be paid, and stays fulfilled
    status, out = await act(shop, unpaid_fulfilled, "pay")
    assert status == 200 and out["status"] == "fulfilled" and out["paid_at"]
    await shop.consistent()


async def test_unknown_order_is_404_and_a_bad_id_422(shop: Shop) -> None:
    status, body, _ = await shop.orders.get("/v1/orders/5f0c7d84-8d0c-4b43-9c0e-6f3c1b7e0a11")
    assert_problem(status, body, 404, "not-found")
    status, body, _ = await shop.orders.post("/v1/orders/5f0c7d84-8d0c-4b43-9c0e-6f3c1b7e0a11/cancel")
    assert_problem(status, body, 404, "not-found")
    status, body, _ = await shop.orders.get("/v1/orders/not-a-uuid")
    assert_problem(status, body, 422, field="order_id")


async def test_payment_amount_must_match_the_total(shop: Shop) -> None:
    await shop.receive("TEE-M", "wh-1", 2)
    order = await placed(shop)
    status, body = await act(shop, order, "pay", {"amount": "19.89"})
    assert_problem(status, body, 422, field="amount")
    status, body = await act(shop, order, "pay", {"amount": "19.9"})
    assert status == 200 and body["status"] == "paid"


async def test_orders_list_filters_by_location_and_status(shop: Shop) -> None:
    await shop.receive("TEE-M", "store-a", 5)
    await shop.receive("TEE-M", "wh-1", 5)
    pickup = await placed(shop, "a", fulfillment={"type": "pickup", "location_id": "store-a"})
    await placed(shop, "b")
    status, body, _ = await shop.orders.get("/v1/orders", params={"location_id": "store-a"})
    assert status == 200 and [o["id"] for o in body["items"]] == [pickup["id"]]
    status, body, _ = await shop.orders.get("/v1/orders", params={"status": "placed"})
    assert len(body["items"]) == 2
