"""Runs are immutable and superseded by re-runs; items are resolved with a reason and who; commit is
gated on every item being matched or resolved, or an explicit recorded override."""

from __future__ import annotations

from typing import Any

from tests.conftest import assert_problem
from tests.services.finance.conftest import Books, only_item, payment


async def day_with_faults(books: Books) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    day = await books.day_of("wh-1")
    good = await books.sell_online({"TEE": 1})
    unpaid = await books.sell_online({"CAP": 1})
    short = await books.sell_online({"JEANS": 1})
    await books.settle(payment(good["id"], "19.90"), payment(short["id"], "78.00"))
    return day, good, unpaid, short


async def test_a_rerun_supersedes_and_the_old_run_stays_as_it_was(books: Books) -> None:
    day, _, unpaid, _ = await day_with_faults(books)
    first = await books.run(day)
    late = await books.settle(payment(unpaid["id"], "9.50"))
    assert late["inserted"] == 1
    second = await books.run(day)
    assert second["supersedes"] == first["id"]
    assert only_item(second, unpaid["id"])["class"] == "matched"
    status, old, _ = await books.finance.get(f"/v1/reconciliations/{first['id']}")
    assert status == 200 and old["status"] == "superseded" and old["superseded_by"] == second["id"]
    assert old["items"] == first["items"] and old["counts"] == first["counts"]
    assert old["items_root"] == first["items_root"] != second["items_root"]
    status, body, _ = await books.finance.post(f"/v1/reconciliations/{first['id']}/items/1/resolution",
                                               json={"action": "write_off", "reason": "too late"})
    assert_problem(status, body, 409, "run-superseded")
    # a run of another scope does not supersede this one
    online = await books.run(day, channel="online")
    assert online["supersedes"] is None
    status, runs, _ = await books.finance.get("/v1/reconciliations", params={"business_day": day.isoformat()})
    assert [r["status"] for r in runs["items"]] == ["open", "open", "superseded"]


async def test_resolutions_record_reason_and_who_and_unlock_the_commit(books: Books) -> None:
    day, good, unpaid, short = await day_with_faults(books)
    run = await books.run(day)
    assert run["status"] == "open" and run["unresolved"] == 2
    status, body, _ = await books.finance.post(f"/v1/reconciliations/{run['id']}/commit")
    assert_problem(status, body, 409, "unresolved-items")
    assert body["unresolved"] == 2

    base = f"/v1/reconciliations/{run['id']}/items"
    matched_no = only_item(run, good["id"])["item_no"]
    status, body, _ = await books.finance.post(f"{base}/{matched_no}/resolution",
                                               json={"action": "write_off", "reason": "x"})
    assert_problem(status, body, 409)
    short_no = only_item(run, short["id"])["item_no"]
    status, body, _ = await books.finance.post(f"{base}/{short_no}/resolution",
                                               json={"action": "adjustment", "reason": "provider fee taken at source",
                                                     "amount": "-1.00"})
    assert status == 201, body
    assert body["resolution"]["action"] == "adjustment" and body["resolution"]["resolved_by"].startswith("finance:")
    status, body, _ = await books.finance.post(f"{base}/{short_no}/resolution",
                                               json={"action": "write_off", "reason": "again"})
    assert_problem(status, body, 409)

    unpaid_no = only_item(run, unpaid["id"])["item_no"]
    status, body, _ = await books.finance.post(f"{base}/{unpaid_no}/resolution", json={
        "action": "linked_settlement", "reason": "paid next day", "settlement_id": 999999})
    assert_problem(status, body, 422, field="settlement_id")
    await books.settle(payment(unpaid["id"], "9.50", external_id="next-day"))
    settlement_id = await books.pool.fetchval("SELECT id FROM finance.settlements WHERE external_id = 'next-day'")
    status, body, _ = await books.finance.post(f"{base}/{unpaid_no}/resolution", json={
        "action": "linked_settlement", "reason": "paid next day", "settlement_id": settlement_id})
    assert status == 201 and body["resolution"]["settlement_id"] == settlement_id

    status, now, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}")
    assert now["status"] == "reconciled" and now["unresolved"] == 0
    assert now["counts"] == run["counts"]  # resolutions never rewrite the run


async def test_bad_resolutions_are_refused(books: Books) -> None:
    day, *_ = await day_with_faults(books)
    run = await books.run(day)
    base = f"/v1/reconciliations/{run['id']}/items"
    for body in ({"action": "adjustment", "reason": "no amount"}, {"action": "write_off", "reason": " "},
                 {"action": "write_off", "reason": "x", "settlement_id": 1}, {"action": "refund", "reason": "x"}):
        status, out, _ = await books.finance.post(f"{base}/1/resolution", json=body)
        assert_problem(status, out, 422)
    status, out, _ = await books.finance.post(f"{base}/999/resolution", json={"action": "write_off", "reason": "x"})
    assert_problem(status, out, 404)
    status, out, _ = await books.finance.post("/v1/reconciliations/424242/items/1/resolution",
                                              json={"action": "write_off", "reason": "x"})
    assert_problem(status, out, 404)


async def test_items_page_and_filter_by_class(books: Books) -> None:
    day, *_ = await day_with_faults(books)
    run = await books.run(day)
    status, page, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}/items", params={"limit": "2"})
    assert status == 200 and [i["item_no"] for i in page["items"]] == [1, 2] and page["next_after"] == 2
    status, page, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}/items",
                                              params={"after": "2", "limit": "2"})
    assert [i["item_no"] for i in page["items"]] == [3] and page["next_after"] is None
    status, page, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}/items",
                                              params={"class": "missing_payment"})
    assert [i["class"] for i in page["items"]] == ["missing_payment"]
    status, body, _ = await books.finance.get("/v1/reconciliations/31337")
    assert_problem(status, body, 404)


async def test_a_run_carries_its_totals_and_tolerances(books: Books) -> None:
    day, *_ = await day_with_faults(books)
    run = await books.run(day)
    assert run["totals"] == [{"currency": "EUR", "sales": "108.40", "expected": "108.40", "paid": "97.90",
                              "difference": "-10.50"}]
    assert (run["amount_tolerance"], run["cash_tolerance"], run["item_count"]) == ("0.00", "0.00", 3)
    assert len(run["items_root"]) == 64
