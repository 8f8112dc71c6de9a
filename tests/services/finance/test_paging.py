"""Finance's lists page with opaque keyset cursors: paging while others import, void, declare and run
sees every row that was there when paging began exactly once, and never a row twice."""

from __future__ import annotations

import asyncio
import itertools
from datetime import date, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import assert_problem
from tests.services.finance.conftest import LOCATIONS, Books, payment

_examples = itertools.count(1)
PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
STORES = [f"page-store-{n:02d}" for n in range(12)]


async def page_all(books: Books, path: str, params: dict[str, str], key: str, between: list[Any]) -> list[Any]:
    """Every page of `path`, running the next of `between` (a coroutine or None) alongside each request."""
    seen: list[Any] = []
    cursor: str | None = None
    steps = iter(between)
    try:
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            work = next(steps, None)
            (status, page, _), _ = await asyncio.gather(books.finance.get(path, params=query),
                                                        work or asyncio.sleep(0))
            assert status == 200, page
            seen += [item[key] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen
    finally:
        for rest in steps:  # steps left when the pages ran out: never started, so closed
            if rest is not None:
                rest.close()


def assert_each_once(seen: list[Any], there_before: set[Any], there_after: set[Any]) -> None:
    assert len(seen) == len(set(seen)), "a row was listed twice"
    assert there_before <= set(seen), f"rows skipped: {sorted(there_before - set(seen))}"
    assert set(seen) <= there_after


async def settlement_ids(books: Books, ref: str) -> set[int]:
    return {r["id"] for r in await books.pool.fetch("SELECT id FROM finance.settlements WHERE order_ref = $1", ref)}


@PROPERTY
@given(before=st.integers(0, 20), limit=st.integers(1, 6),
       during=st.lists(st.tuples(st.integers(0, 3), st.booleans()), max_size=8))
async def test_paging_settlements_while_others_import_and_void_sees_each_row_once(
        books: Books, before: int, limit: int, during: list[tuple[int, bool]]) -> None:
    ref = f"paged-{next(_examples)}"
    if before:
        await books.settle(*[payment(ref, "1.00") for _ in range(before)])
    there = await settlement_ids(books, ref)

    async def meanwhile(new: int, void_one: bool) -> None:
        if new:
            await books.settle(*[payment(ref, "2.00") for _ in range(new)])
        live = await books.pool.fetchval("SELECT min(id) FROM finance.settlements WHERE order_ref = $1"
                                         " AND voided_at IS NULL", ref)
        if void_one and live is not None:
            status, out, _ = await books.finance.post(f"/v1/settlements/{live}/void", json={"reason": "paging"})
            assert status == 200, out

    seen = await page_all(books, "/v1/settlements", {"order_id": ref, "limit": str(limit)}, "id",
                          [meanwhile(n, v) for n, v in during])
    assert_each_once(seen, there, await settlement_ids(books, ref))
    assert seen == sorted(seen)


async def ensure_stores(books: Books) -> None:
    have = {r["id"] for r in await books.pool.fetch("SELECT id FROM inventory.locations")}
    for store in STORES:
        if store not in have:
            status, body, _ = await books.inventory.put(f"/v1/locations/{store}", json=LOCATIONS["store-a"])
            assert status == 201, body


async def declare(books: Books, store: str, day: date, cash: str) -> None:
    status, body, _ = await books.finance.post("/v1/closeouts", json={
        "location_id": store, "business_day": day.isoformat(), "currency": "EUR",
        "tenders": [{"kind": "cash", "amount": cash}]})
    assert status == 201, body


@PROPERTY
@given(before=st.integers(0, 8), limit=st.integers(1, 4),
       during=st.lists(st.sampled_from(range(len(STORES))), max_size=6))
async def test_paging_closeouts_while_stores_declare_sees_each_store_once(
        books: Books, before: int, limit: int, during: list[int]) -> None:
    await ensure_stores(books)
    day = date(2031, 1, 1) + timedelta(days=next(_examples))
    for store in STORES[:before]:
        await declare(books, store, day, "1.00")
    seen = await page_all(books, "/v1/closeouts", {"business_day": day.isoformat(), "limit": str(limit)},
                          "location_id", [declare(books, STORES[i], day, "2.00") for i in during])
    after = {r["location_id"] for r in await books.pool.fetch(
        "SELECT location_id FROM finance.closeouts WHERE business_day = $1", day)}
    assert_each_once(seen, set(STORES[:before]), after)
    assert seen == sorted(seen)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.integers(0, 5), limit=st.integers(1, 3), during=st.lists(st.booleans(), max_size=4))
async def test_paging_runs_while_the_day_is_run_again_sees_each_run_once(
        books: Books, before: int, limit: int, during: list[bool]) -> None:
    day = date(2032, 1, 1) + timedelta(days=next(_examples))
    for _ in range(before):
        await books.run(day)

    def runs_of_day() -> Any:
        return books.pool.fetch("SELECT id FROM finance.runs WHERE business_day = $1", day)

    there = {r["id"] for r in await runs_of_day()}
    seen = await page_all(books, "/v1/reconciliations", {"business_day": day.isoformat(), "limit": str(limit)},
                          "id", [books.run(day) if again else None for again in during])
    assert_each_once(seen, there, {r["id"] for r in await runs_of_day()})
    assert seen == sorted(seen, reverse=True)  # newest first


async def test_run_items_page_by_cursor_and_a_foreign_cursor_is_refused(books: Books) -> None:
    orders = [await books.sell_online({"TEE": 1}) for _ in range(5)]
    run = await books.run(await books.day_of("wh-1"))
    other = await books.run(await books.day_of("wh-1"), channel="online")
    path = f"/v1/reconciliations/{run['id']}/items"
    seen = await page_all(books, path, {"limit": "2"}, "item_no", [])
    assert seen == [1, 2, 3, 4, 5] and len(orders) == 5

    status, page, _ = await books.finance.get(path, params={"limit": "2"})
    cursor = page["next_cursor"]
    for bad in (cursor[:-3], "not-a-cursor", "x" * 600):
        status, out, _ = await books.finance.get(path, params={"cursor": bad})
        assert_problem(status, out, 422)
    status, out, _ = await books.finance.get(f"/v1/reconciliations/{other['id']}/items", params={"cursor": cursor})
    assert_problem(status, out, 422, field="cursor")  # another run's cursor
    status, out, _ = await books.finance.get("/v1/settlements", params={"cursor": cursor})
    assert_problem(status, out, 422, field="cursor")  # another list's cursor
    status, out, _ = await books.finance.get(path, params={"cursor": cursor, "after": "1"})
    assert_problem(status, out, 422)


async def test_a_closeout_cursor_belongs_to_its_business_day(books: Books) -> None:
    day = await books.day_of("store-a")
    await declare(books, "store-a", day, "1.00")
    await declare(books, "store-ny", day, "1.00")
    status, page, _ = await books.finance.get("/v1/closeouts", params={"business_day": day.isoformat(), "limit": "1"})
    assert status == 200 and len(page["items"]) == 1 and page["next_cursor"]
    status, out, _ = await books.finance.get("/v1/closeouts", params={
        "business_day": (day + timedelta(days=1)).isoformat(), "cursor": page["next_cursor"]})
    assert_problem(status, out, 422, field="cursor")
