from __future__ import annotations

import asyncio
import base64
import json

import asyncpg

from services.inventory import repository as repo
from tests.conftest import Api, assert_problem
from tests.services.inventory.conftest import move


async def level(api: Api, sku: str, location_id: str) -> dict[str, int]:
    status, body, _ = await api.get(f"/v1/stock/{sku}")
    assert status == 200
    return next(loc for loc in body["locations"] if loc["location_id"] == location_id)


async def test_receipt_adds_and_count_sets_on_hand(inventory: Api) -> None:
    status, body, _ = await move(inventory, "r1", sku="TEE-M", location_id="store-a", kind="receipt", qty=10)
    assert status == 201, body
    assert body["levels"] == [{"location_id": "store-a", "on_hand": 10, "reserved": 0, "safety_stock": 0,
                               "available": 10}]
    status, body, _ = await move(inventory, "c1", sku="TEE-M", location_id="store-a", kind="count", qty=7)
    assert status == 201 and body["levels"][0]["on_hand"] == 7
    status, body, _ = await move(inventory, "a1", sku="TEE-M", location_id="store-a", kind="adjustment", qty=-2)
    assert status == 201 and body["levels"][0]["on_hand"] == 5


async def test_transfer_moves_stock_atomically(inventory: Api) -> None:
    await move(inventory, "r1", sku="TEE-M", location_id="store-a", kind="receipt", qty=5)
    status, body, _ = await move(inventory, "t1", sku="TEE-M", location_id="store-a", kind="transfer", qty=3,
                                 to_location_id="store-b")
    assert status == 201, body
    assert [(lv["location_id"], lv["on_hand"]) for lv in body["levels"]] == [("store-a", 2), ("store-b", 3)]
    status, body, _ = await move(inventory, "t2", sku="TEE-M", location_id="store-a", kind="transfer", qty=3,
                                 to_location_id="store-b")
    assert_problem(status, body, 409, "insufficient-stock")
    assert (await level(inventory, "TEE-M", "store-a"))["on_hand"] == 2
    assert (await level(inventory, "TEE-M", "store-b"))["on_hand"] == 3


async def test_taking_more_than_on_hand_is_a_conflict_and_changes_nothing(inventory: Api, pool: asyncpg.Pool) -> None:
    await move(inventory, "r1", sku="TEE-M", location_id="store-a", kind="receipt", qty=3)
    status, body, _ = await move(inventory, "a1", sku="TEE-M", location_id="store-a", kind="adjustment", qty=-4)
    assert_problem(status, body, 409, "insufficient-stock")
    status, body, _ = await move(inventory, "a2", sku="JEANS-32", location_id="store-a", kind="adjustment", qty=-1)
    assert_problem(status, body, 409, "insufficient-stock")
    assert (await level(inventory, "TEE-M", "store-a"))["on_hand"] == 3
    assert await pool.fetchval("SELECT count(*) FROM inventory.stock_movements") == 1


async def test_idempotency_key_replays_the_first_result_and_refuses_another_body(inventory: Api) -> None:
    first = await move(inventory, "same", sku="TEE-M", location_id="store-a", kind="receipt", qty=4)
    again = await move(inventory, "same", sku="TEE-M", location_id="store-a", kind="receipt", qty=4)
    assert first[0] == again[0] == 201
    assert first[1] == again[1]
    assert again[2].headers["Idempotent-Replayed"] == "true"
    assert (await level(inventory, "TEE-M", "store-a"))["on_hand"] == 4
    status, body, _ = await move(inventory, "same", sku="TEE-M", location_id="store-a", kind="receipt", qty=5)
    assert_problem(status, body, 409, "idempotency-key-reused")


async def test_concurrent_idempotent_requests_apply_once(inventory: Api) -> None:
    results = await asyncio.gather(*[
        move(inventory, "burst", sku="TEE-M", location_id="store-a", kind="receipt", qty=2) for _ in range(20)
    ])
    assert {r[0] for r in results} == {201}
    assert (await level(inventory, "TEE-M", "store-a"))["on_hand"] == 2


async def test_fifty_concurrent_decrements_on_forty_end_at_zero_with_ten_conflicts(
    inventory: Api, pool: asyncpg.Pool
) -> None:
    await move(inventory, "r", sku="TEE-M", location_id="store-a", kind="receipt", qty=40)
    results = await asyncio.gather(*[
        move(inventory, f"d{i}", sku="TEE-M", location_id="store-a", kind="adjustment", qty=-1) for i in range(50)
    ])
    statuses = sorted(r[0] for r in results)
    assert statuses.count(201) == 40 and statuses.count(409) == 10
    assert (await level(inventory, "TEE-M", "store-a"))["on_hand"] == 0
    assert await repo.level_sums_mismatch(pool) == []


async def test_movements_are_append_only(inventory: Api, pool: asyncpg.Pool) -> None:
    await move(inventory, "r", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    for sql in ("UPDATE inventory.stock_movements SET on_hand_delta = 5",
                "DELETE FROM inventory.stock_movements", "TRUNCATE inventory.stock_movements"):
        try:
            await pool.execute(sql)
            raise AssertionError(f"{sql} was allowed")
        except asyncpg.InsufficientPrivilegeError:
            pass


async def test_database_refuses_reserved_above_on_hand(inventory: Api, pool: asyncpg.Pool) -> None:
    await move(inventory, "r", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    try:
        await pool.execute("UPDATE inventory.stock_levels SET reserved = 2 WHERE sku = 'TEE-M'")
        raise AssertionError("reserved > on_hand was allowed")
    except asyncpg.CheckViolationError:
        pass


async def test_movement_journal_lists_every_change_with_its_deltas(inventory: Api) -> None:
    await move(inventory, "r", sku="TEE-M", location_id="store-a", kind="receipt", qty=5)
    await move(inventory, "t", sku="TEE-M", location_id="store-a", kind="transfer", qty=2, to_location_id="store-b")
    status, body, _ = await inventory.get("/v1/stock/movements?sku=TEE-M&limit=2")
    assert status == 200
    assert [(m["location_id"], m["kind"], m["on_hand_delta"]) for m in body["items"]] == [
        ("store-a", "receipt", 5), ("store-a", "transfer", -2)]
    status, body, _ = await inventory.get("/v1/stock/movements", params={"sku": "TEE-M", "cursor": body["next_cursor"]})
    assert [(m["location_id"], m["on_hand_delta"]) for m in body["items"]] == [("store-b", 2)]
    assert body["next_cursor"] is None


async def test_skus_page_on_a_cursor_and_a_forged_one_is_a_422(inventory: Api) -> None:
    status, page, _ = await inventory.get("/v1/skus", params={"limit": 1})
    assert status == 200 and len(page["items"]) == 1 and page["next_cursor"], page
    seen = [page["items"][0]["sku"]]
    while page["next_cursor"]:
        status, page, _ = await inventory.get("/v1/skus", params={"limit": 1, "cursor": page["next_cursor"]})
        assert status == 200, page
        seen += [s["sku"] for s in page["items"]]
    assert seen == sorted(seen) and len(seen) == len(set(seen)) > 1
    for path in ("/v1/skus", "/v1/stock/movements"):
        status, body, _ = await inventory.get(path, params={"cursor": "W10"})
        assert_problem(status, body, 422, field="cursor")


async def test_a_forged_sku_cursor_is_a_422(inventory: Api) -> None:
    for key in (["skus", "\u0000"], ["skus", 5], ["stock_movements", "7"]):
        forged = base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
        path = "/v1/skus" if key[0] == "skus" else "/v1/stock/movements"
        status, body, _ = await inventory.get(path, params={"cursor": forged})
        assert_problem(status, body, 422, field="cursor")
