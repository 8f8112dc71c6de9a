"""The business day is the location's local date: the same instant is two different days in two places."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.services.finance.conftest import Books, items_of, payment

# UTC+14 and UTC-11 are 25 hours apart: at any instant their local dates differ.
EAST = {"name": "Kiritimati", "kind": "store", "lat": 1.87, "lon": -157.4, "ship": False, "pickup": True,
        "timezone": "Pacific/Kiritimati"}
WEST = {"name": "Pago Pago", "kind": "store", "lat": -14.27, "lon": -170.7, "ship": False, "pickup": True,
        "timezone": "Pacific/Pago_Pago"}


async def test_sales_of_one_instant_fall_on_each_store_own_day(books: Books) -> None:
    for location_id, body in (("east", EAST), ("west", WEST)):
        status, out, _ = await books.inventory.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, out
        await books.stock(location_id)
    east_sale = await books.till("east", {"TEE": 1}, [("cash", "19.90")])
    west_sale = await books.till("west", {"CAP": 1}, [("cash", "9.50")])
    east_day, west_day = await books.day_of("east"), await books.day_of("west")
    assert east_day > west_day
    assert str(east_day) == east_sale["business_day"] and str(west_day) == west_sale["business_day"]

    east_run = await books.run(east_day, channel="store")
    west_run = await books.run(west_day, channel="store")
    assert [i["order_id"] for i in items_of(east_run)] == [east_sale["id"]]
    assert [i["order_id"] for i in items_of(west_run)] == [west_sale["id"]]
    assert {i["location_id"] for i in east_run["items"] if i["kind"] == "tender"} == {"east"}


async def test_a_late_evening_sale_matches_a_payment_settled_the_next_utc_day(books: Books) -> None:
    order = await books.sell_online({"JEANS": 1})
    tomorrow = datetime.now(UTC) + timedelta(days=1, hours=2)
    await books.settle(payment(order["id"], "79.00", settled_at=tomorrow))
    run = await books.run(await books.day_of("wh-1"))
    [item] = items_of(run)
    assert item["class"] == "matched"
    # the settlement belongs to the sale's day, not to the day it settled on
    later = await books.run(tomorrow.date())
    assert later["items"] == []


async def test_a_payment_without_a_sale_belongs_to_the_utc_day_it_settled(books: Books) -> None:
    when = datetime(2024, 3, 9, 23, 59, 59, tzinfo=UTC)
    await books.settle(payment("ghost", "5.00", settled_at=when),
                       payment("ghost-2", "6.00", settled_at=when + timedelta(seconds=1)))
    first = await books.run(when.date())
    second = await books.run(when.date() + timedelta(days=1))
    assert [i["order_ref"] for i in first["items"]] == ["ghost"]
    assert [i["order_ref"] for i in second["items"]] == ["ghost-2"]
