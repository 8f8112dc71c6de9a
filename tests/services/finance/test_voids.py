"""A wrong settlement is voided (kept, with why and who), the corrected one imported, and only live
settlements count in reconciliation; an auditor still sees both."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Api, assert_problem
from tests.services.finance.conftest import Books, only_item, payment
from tests.services.finance.test_commit import MemoryLedger, committing

__all__ = ["committing"]  # a fixture, used by name below


async def live_rows(books: Books, external_id: str) -> list[Any]:
    return await books.pool.fetch("SELECT id, amount FROM finance.settlements"
                                  " WHERE external_id = $1 AND voided_at IS NULL", external_id)


async def settlement_id(books: Books, external_id: str) -> int:
    [row] = await live_rows(books, external_id)
    return int(row["id"])


async def void(books: Books, sid: int, reason: str | None = "amount cut short", api: Api | None = None,
               **kw: Any) -> tuple[int, Any]:
    body = {} if reason is None else {"reason": reason}
    status, out, _ = await (api or books.finance).post(f"/v1/settlements/{sid}/void", json=body, **kw)
    return status, out


async def a_wrong_payment(books: Books) -> tuple[dict[str, Any], dict[str, Any], int]:
    """An order of 19.90 whose settlement was stored as 1.99 (the body cut short); the corrected row."""
    order = await books.sell_online({"TEE": 1})
    wrong = payment(order["id"], "1.99", external_id="pay-1")
    await books.settle(wrong)
    right = {**wrong, "amount": "19.90"}
    return order, right, await settlement_id(books, "pay-1")


async def test_a_wrong_settlement_is_voided_and_the_corrected_file_imported(books: Books) -> None:
    order, right, wrong_id = await a_wrong_payment(books)
    day = await books.day_of("wh-1")
    assert only_item(await books.run(day), order["id"])["class"] == "amount_mismatch"
    status, out, _ = await books.finance.post("/v1/settlements", json=[right])
    assert_problem(status, out, 422)  # without a void, the right values are refused, not overwritten

    status, voided = await void(books, wrong_id, "provider file cut short: 1.99 is 19.90")
    assert status == 200, voided
    assert (voided["id"], voided["status"], voided["amount"]) == (wrong_id, "voided", "1.99")
    assert voided["void_reason"] == "provider file cut short: 1.99 is 19.90"
    assert voided["voided_by"].startswith("finance:") and voided["voided_at"]

    imported = await books.settle(right)
    assert (imported["inserted"], imported["already_imported"]) == (1, 0)
    right_id = await settlement_id(books, "pay-1")
    item = only_item(await books.run(day), order["id"])
    assert (item["class"], item["paid"], item["settlement_ids"]) == ("matched", "19.90", [right_id])

    status, page, _ = await books.finance.get("/v1/settlements", params={"order_id": order["id"]})
    assert status == 200
    assert [(s["id"], s["status"], s["amount"], s["void_reason"]) for s in page["items"]] == [
        (wrong_id, "voided", "1.99", "provider file cut short: 1.99 is 19.90"), (right_id, "live", "19.90", None)]
    assert page["items"][0]["voided_by"] == voided["voided_by"]
    status, live, _ = await books.finance.get("/v1/settlements", params={"order_id": order["id"], "status": "live"})
    assert [s["id"] for s in live["items"]] == [right_id]
    status, gone, _ = await books.finance.get("/v1/settlements", params={"status": "voided"})
    assert [s["id"] for s in gone["items"]] == [wrong_id]
    assert await books.pool.fetchval("SELECT count(*) FROM finance.settlements") == 2  # nothing deleted


async def test_an_auditor_sees_the_voided_row_and_its_reason(books: Books, make_key: Any) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    assert (await void(books, wrong_id, "duplicate upload"))[0] == 200
    auditor = books.finance.as_key(await make_key("auditor"))
    status, page, _ = await auditor.get("/v1/settlements")
    assert status == 200
    [row] = page["items"]
    assert (row["status"], row["void_reason"]) == ("voided", "duplicate upload") and row["voided_by"]


async def test_voiding_twice_is_a_conflict_and_changes_nothing(books: Books) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    status, first = await void(books, wrong_id, "first")
    assert status == 200
    status, out = await void(books, wrong_id, "second")
    assert_problem(status, out, 409, "settlement-voided")
    row = await books.pool.fetchrow("SELECT void_reason, voided_at FROM finance.settlements WHERE id = $1", wrong_id)
    assert row["void_reason"] == "first" and row["voided_at"].isoformat().startswith(first["voided_at"][:19])


@pytest.mark.parametrize("role", ["ops", "store", "shop", "auditor"])
async def test_other_roles_may_not_void(books: Books, make_key: Any, role: str) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    api = books.finance.as_key(await make_key(role, "store-a" if role == "store" else None))
    status, out = await void(books, wrong_id, api=api)
    assert_problem(status, out, 403, "forbidden")
    status, out, _ = await api.post("/v1/settlements/void",
                                    json={"provider": "stripe", "external_id": "pay-1", "reason": "x"})
    assert_problem(status, out, 403, "forbidden")
    assert len(await live_rows(books, "pay-1")) == 1


async def test_admin_may_void(books: Books, make_key: Any) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    status, out = await void(books, wrong_id, api=books.finance.as_key(await make_key("admin")))
    assert status == 200 and out["voided_by"].startswith("admin:")


async def test_a_void_needs_a_reason_and_a_known_settlement(books: Books) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": None}, {"reason": "x", "extra": 1}):
        status, out, _ = await books.finance.post(f"/v1/settlements/{wrong_id}/void", json=body)
        assert_problem(status, out, 422)
    status, out, _ = await books.finance.post(f"/v1/settlements/{wrong_id}/void")
    assert_problem(status, out, 422)
    status, out = await void(books, 987654)
    assert_problem(status, out, 404)
    status, out, _ = await books.finance.post("/v1/settlements/abc/void", json={"reason": "x"})
    assert_problem(status, out, 422)
    assert len(await live_rows(books, "pay-1")) == 1


async def test_a_void_by_provider_and_external_id_takes_the_live_row(books: Books) -> None:
    _, right, wrong_id = await a_wrong_payment(books)
    key = {"provider": "stripe", "external_id": "pay-1"}
    status, out, _ = await books.finance.post("/v1/settlements/void", json={**key, "reason": "cut short"})
    assert status == 200 and out["id"] == wrong_id and out["status"] == "voided"
    status, out, _ = await books.finance.post("/v1/settlements/void", json={**key, "reason": "again"})
    assert_problem(status, out, 409, "settlement-voided")
    await books.settle(right)
    status, out, _ = await books.finance.post("/v1/settlements/void", json={**key, "reason": "the new one"})
    assert status == 200 and out["id"] != wrong_id  # the corrected row, the one live
    status, out, _ = await books.finance.post("/v1/settlements/void",
                                              json={"provider": "stripe", "external_id": "nope", "reason": "x"})
    assert_problem(status, out, 404)


async def test_resending_the_wrong_file_after_a_void_does_not_bring_the_wrong_row_back(books: Books) -> None:
    order, right, wrong_id = await a_wrong_payment(books)
    wrong = {**right, "amount": "1.99"}
    other = payment(order["id"], "0.00", external_id="pay-2")
    assert (await void(books, wrong_id))[0] == 200
    again = await books.settle(wrong, other)
    assert (again["inserted"], again["already_imported"], again["skipped_voided"]) == (1, 0, 1)
    assert again["voided_repeats"] == [{"line": 1, "provider": "stripe", "external_id": "pay-1",
                                        "voided_id": wrong_id}]
    assert await live_rows(books, "pay-1") == []
    only = await books.settle(wrong, expect=200)
    assert (only["inserted"], only["skipped_voided"]) == (0, 1)
    status, forced, _ = await books.finance.post("/v1/settlements", json=[wrong],
                                                 params={"reimport_voided": "true"})
    assert status == 201 and forced["inserted"] == 1, forced
    assert [str(r["amount"]) for r in await live_rows(books, "pay-1")] == ["1.99"]


async def test_an_idempotency_key_replays_the_void(books: Books) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    status, first = await void(books, wrong_id, "once", idem="void-1")
    assert status == 200
    status, again, resp = await books.finance.post(f"/v1/settlements/{wrong_id}/void", json={"reason": "once"},
                                                   idem="void-1")
    assert status == 200 and again == first and resp.headers.get("Idempotent-Replayed") == "true"
    status, out = await void(books, wrong_id, "another", idem="void-1")
    assert_problem(status, out, 409, "idempotency-key-reused")


async def test_a_voided_settlement_cannot_be_linked_in_a_resolution(books: Books) -> None:
    order, _, wrong_id = await a_wrong_payment(books)
    run = await books.run(await books.day_of("wh-1"))
    assert (await void(books, wrong_id))[0] == 200
    item = only_item(run, order["id"])
    status, out, _ = await books.finance.post(
        f"/v1/reconciliations/{run['id']}/items/{item['item_no']}/resolution",
        json={"action": "linked_settlement", "reason": "x", "settlement_id": wrong_id})
    assert_problem(status, out, 422, field="settlement_id")


async def test_a_settlement_on_the_ledger_cannot_be_voided(books: Books,
                                                            committing: tuple[Api, MemoryLedger]) -> None:
    api, ledger = committing
    order = await books.sell_online({"TEE": 1})
    await books.settle(payment(order["id"], "19.90", external_id="pay-9"))
    run = await books.run(await books.day_of("wh-1"))
    status, out, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200, out
    status, out = await void(books, await settlement_id(books, "pay-9"))
    assert_problem(status, out, 409, "settlement-committed")
    assert str(run["id"]) in out["detail"]
    assert len(await live_rows(books, "pay-9")) == 1


async def test_a_run_that_counted_a_voided_settlement_is_stale_and_cannot_be_committed(
        books: Books, committing: tuple[Api, MemoryLedger]) -> None:
    api, ledger = committing
    order, right, wrong_id = await a_wrong_payment(books)
    day = await books.day_of("wh-1")
    stale = await books.run(day)
    status, voided = await void(books, wrong_id)
    assert status == 200 and voided["stale_runs"] == [stale["id"]]
    status, out, _ = await api.post(f"/v1/reconciliations/{stale['id']}/commit", json={"override_reason": "x"})
    assert_problem(status, out, 409, "run-stale")
    assert ledger.entries == []
    await books.settle(right)
    fresh = await books.run(day)
    assert fresh["status"] == "reconciled"
    status, out, _ = await api.post(f"/v1/reconciliations/{fresh['id']}/commit")
    assert status == 200, out
    assert [e["paid"] for _, e in ledger.entries if e["kind"] == "reconciled_sale"] == ["19.90"]


async def test_concurrent_void_and_corrected_import_never_lose_a_row(books: Books) -> None:
    """Whichever commits first, the corrected row ends up live or its import is refused: never a silent
    200 that imported nothing, never two live rows of one key."""
    order = await books.sell_online({"TEE": 1})
    for n in range(12):
        key = f"race-{n}"
        await books.settle(payment(order["id"], "1.99", external_id=key))
        sid = await settlement_id(books, key)
        right = payment(order["id"], "19.90", external_id=key)
        (void_status, _), (import_status, imported, _) = await asyncio.gather(
            void(books, sid), books.finance.post("/v1/settlements", json=[right]))
        assert void_status == 200
        assert import_status in (201, 422), imported
        live = await live_rows(books, key)
        if import_status == 201:
            assert imported["inserted"] == 1 and [str(r["amount"]) for r in live] == ["19.90"]
        else:
            assert live == []
            assert (await books.settle(right))["inserted"] == 1  # sent again, it goes in


async def test_concurrent_voids_of_one_settlement_void_it_once(books: Books) -> None:
    _, _, wrong_id = await a_wrong_payment(books)
    results = await asyncio.gather(*(void(books, wrong_id, f"reason {i}") for i in range(6)))
    assert sorted(status for status, _ in results) == [200, 409, 409, 409, 409, 409]



async def test_a_voided_stray_payment_leaves_the_next_run(books: Books) -> None:
    await books.settle(payment("nobody-ordered-this", "7.77", external_id="stray-1"))
    day = await books.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    run = await books.run(day)
    assert run["counts"]["missing_sale"] == 1
    status, voided = await void(books, await settlement_id(books, "stray-1"), "test payment")
    assert status == 200 and voided["stale_runs"] == [run["id"]]  # found by the day it settled on
    rerun = await books.run(day)
    assert rerun["counts"]["missing_sale"] == 0 and rerun["status"] == "reconciled"
