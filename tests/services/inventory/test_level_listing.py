"""GET /v1/stock lists levels by location then SKU with filters; the journal reads newest first too."""

from __future__ import annotations

from tests.conftest import Api, assert_problem
from tests.services.inventory.conftest import move


async def test_bad_filters_and_foreign_cursors_are_refused(inventory: Api) -> None:
    for params, field in [({"sku_prefix": "a b"}, "sku_prefix"), ({"limit": "0"}, "limit"),
                          ({"below_safety": "perhaps"}, "below_safety"), ({"cursor": "garbage"}, "cursor")]:
        status, body, _ = await inventory.get("/v1/stock", params=params)
        assert_problem(status, body, 422, field=field)
    _, page, _ = await inventory.get("/v1/stock/movements", params={"limit": "1"})
    if page["next_cursor"]:  # a cursor of another list (or order) is not one of this list
        status, body, _ = await inventory.get("/v1/stock", params={"cursor": page["next_cursor"]})
        assert_problem(status, body, 422, field="cursor")


async def test_levels_by_location_with_filters_and_pages(inventory: Api) -> None:
    for i, (sku, location, qty) in enumerate([("TEE-M", "store-a", 5), ("JEANS-32", "store-a", 2),
                                              ("TEE-M", "store-b", 7), ("JEANS-32", "wh-1", 40)]):
        assert (await move(inventory, f"r{i}", sku=sku, location_id=location, kind="receipt", qty=qty))[0] == 201
    status, _, _ = await inventory.put("/v1/stock/JEANS-32/locations/store-a/safety-stock", json={"safety_stock": 3})
    assert status == 200
    _, all_levels, _ = await inventory.get("/v1/stock")
    assert [(r["location_id"], r["sku"]) for r in all_levels["items"]] == [
        ("store-a", "JEANS-32"), ("store-a", "TEE-M"), ("store-b", "TEE-M"), ("wh-1", "JEANS-32")]
    _, here, _ = await inventory.get("/v1/stock", params={"location_id": "store-a", "sku_prefix": "TEE"})
    assert [(r["sku"], r["on_hand"], r["available"]) for r in here["items"]] == [("TEE-M", 5, 5)]
    _, low, _ = await inventory.get("/v1/stock", params={"below_safety": "true"})
    assert [(r["location_id"], r["sku"], r["safety_stock"]) for r in low["items"]] == [("store-a", "JEANS-32", 3)]
    seen, cursor = [], None
    while True:
        _, page, _ = await inventory.get("/v1/stock", params={"limit": "3", **({"cursor": cursor} if cursor else {})})
        seen += [(r["location_id"], r["sku"]) for r in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [(r["location_id"], r["sku"]) for r in all_levels["items"]]


async def test_the_journal_newest_first_pages_backwards(inventory: Api) -> None:
    for i in range(5):
        assert (await move(inventory, f"n{i}", sku="TEE-M", location_id="store-a", kind="receipt", qty=i + 1))[0] == 201
    _, first, _ = await inventory.get("/v1/stock/movements", params={"order": "newest", "limit": "2"})
    _, second, _ = await inventory.get("/v1/stock/movements", params={"order": "newest", "limit": "2",
                                                                      "cursor": first["next_cursor"]})
    ids = [m["id"] for m in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4
    assert [m["on_hand_delta"] for m in first["items"]] == [5, 4]
    status, body, _ = await inventory.get("/v1/stock/movements", params={"cursor": first["next_cursor"]})
    assert_problem(status, body, 422, field="cursor")  # a newest-first cursor does not page oldest first
