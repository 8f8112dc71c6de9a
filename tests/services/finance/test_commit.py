"""Commit writes each reconciled sale and a run summary through the ledger port, signed as finance, once.

The ledger here is mostly a stand-in that keeps entries in memory and checks what a real backend checks
of a submission: finance's own signature over exactly these entries, and the append policy (the
ledger's own backends have their own contract tests); the end-to-end tests use the embedded one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ledger import signing
from ledger.identity import TrustStore, init_identities, msp_dir
from ledger.policy import require_append
from ledger.service.use_cases import member_identity, open_ledger
from ledger.signing import Submission
from ledger.verify import verify_bundle
from services.finance.app import create_app
from shared.settings import Settings
from tests.conftest import Api, ServiceFactory, assert_problem
from tests.services.finance.conftest import Books, only_item, payment


@dataclass
class StubReceipt:
    seq: int
    leaf_hash: str
    batch_id: int


class MemoryLedger:
    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.batches = 0

    async def append(self, entries: list[dict[str, Any]], submission: Submission) -> list[StubReceipt]:
        receipts = []
        signing.check_submission(self.trust, submission, signing.entry_leaves(entries), datetime.now(UTC), 120)
        self.batches += 1
        for entry in entries:
            require_append(submission.org, entry["kind"])
            self.entries.append((submission.org, entry))
            receipts.append(StubReceipt(len(self.entries) - 1, "00" * 32, self.batches))
        return receipts


@pytest.fixture
async def committing(books: Books, settings: Settings, make_key: Any) -> AsyncIterator[tuple[Api, MemoryLedger]]:
    init_identities(settings.data_dir, ["finance"])
    ledger = MemoryLedger(TrustStore.from_dir(msp_dir(settings.data_dir)))
    client = TestClient(TestServer(create_app(settings, ledger=ledger)))
    await client.start_server()
    yield Api(client, await make_key("finance")), ledger
    await client.close()


async def test_a_reconciled_run_commits_each_sale_and_a_summary_once(books: Books,
                                                                     committing: tuple[Api, MemoryLedger]) -> None:
    api, ledger = committing
    orders = [await books.sell_online({"TEE": 1}), await books.sell_online({"CAP": 2})]
    await books.settle(payment(orders[0]["id"], "19.90"), payment(orders[1]["id"], "10.00"),
                       payment(orders[1]["id"], "9.00"))
    run = await books.run(await books.day_of("wh-1"))
    assert run["status"] == "reconciled"
    status, out, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200, out
    assert (out["written"], out["already"], out["status"]) == (3, 0, "committed")
    assert {org for org, _ in ledger.entries} == {"finance"}
    kinds = [e["kind"] for _, e in ledger.entries]
    assert kinds == ["reconciled_sale", "reconciled_sale", "reconciliation_summary"]
    summary = ledger.entries[-1][1]
    assert (summary["items_root"], summary["counts"], summary["override"]) == (run["items_root"], run["counts"], None)
    # Items are ordered by order id (a UUID), not by when the order was placed.
    sales = {e["order_id"]: e for _, e in ledger.entries[:2]}
    assert (sales[orders[0]["id"]]["paid"], sales[orders[0]["id"]]["class"]) == ("19.90", "matched")
    assert (sales[orders[1]["id"]]["paid"], sales[orders[1]["id"]]["class"]) == ("19.00", "matched")

    status, again, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200 and (again["written"], again["already"]) == (0, 3)
    assert len(ledger.entries) == 3
    assert await books.pool.fetchval("SELECT count(*) FROM finance.ledger_commits") == 3
    status, body, _ = await api.get(f"/v1/reconciliations/{run['id']}")
    assert body["status"] == "committed" and body["committed_by"].startswith("finance:")


async def test_unresolved_items_need_a_resolution_or_a_recorded_override(books: Books,
                                                                         committing: tuple[Api, MemoryLedger]) -> None:
    api, ledger = committing
    unpaid = await books.sell_online({"TEE": 1})
    run = await books.run(await books.day_of("wh-1"))
    status, body, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit", json={})
    assert_problem(status, body, 409, "unresolved-items")
    assert ledger.entries == []
    status, out, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit",
                                    json={"override_reason": "customer paid cash on delivery; chasing receipt"})
    assert status == 200 and out["written"] == 2, out
    sale, summary = (e for _, e in ledger.entries)
    assert (sale["order_id"], sale["class"]) == (unpaid["id"], "missing_payment")
    assert summary["override"]["reason"].startswith("customer paid") and summary["override"]["by"].startswith("fin")
    row = await books.pool.fetchrow("SELECT override_reason, override_by FROM finance.runs WHERE id = $1", run["id"])
    assert row["override_reason"].startswith("customer") and row["override_by"].startswith("finance:")


async def test_a_resolution_travels_with_its_sale_and_a_rerun_does_not_repeat_sales(
        books: Books, committing: tuple[Api, MemoryLedger]) -> None:
    api, ledger = committing
    order = await books.sell_online({"JEANS": 1})
    await books.settle(payment(order["id"], "78.00"))
    run = await books.run(await books.day_of("wh-1"))
    item_no = only_item(run, order["id"])["item_no"]
    await books.finance.post(f"/v1/reconciliations/{run['id']}/items/{item_no}/resolution",
                             json={"action": "write_off", "reason": "goodwill"})
    status, _, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200
    assert ledger.entries[0][1]["resolution"]["action"] == "write_off"
    rerun = await books.run(await books.day_of("wh-1"))
    status, body, _ = await api.post(f"/v1/reconciliations/{run['id']}/commit")
    assert_problem(status, body, 409, "run-superseded")
    await books.finance.post(f"/v1/reconciliations/{rerun['id']}/items/{item_no}/resolution",
                             json={"action": "write_off", "reason": "goodwill"})
    status, out, _ = await api.post(f"/v1/reconciliations/{rerun['id']}/commit")
    assert status == 200 and out["written"] == 1  # only the new summary: the sale is on the ledger already
    assert [e["kind"] for _, e in ledger.entries][-1] == "reconciliation_summary"


async def test_commit_to_the_embedded_ledger_audits_clean_and_matches_finance_revenue(
    books: Books, service: ServiceFactory, make_key: Any
) -> None:
    """End to end: finance's default wiring appends to the real ledger; the auditor's revenue audit
    finds the ledger and finance's revenue in agreement, and spots a sale finance adds afterwards."""
    for lines in ({"TEE": 1}, {"JEANS": 2, "CAP": 1}):
        order = await books.sell_online(lines)
        await books.settle(payment(order["id"], order["total"]))
    day = (await books.day_of("wh-1")).isoformat()
    run = await books.run(await books.day_of("wh-1"))
    status, out, _ = await books.finance.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200, out
    ledger = (await service("ledger")).as_key(await make_key("auditor"))
    status, audit, _ = await ledger.get("/v1/ledger/audit")
    assert status == 200 and audit["ok"], audit
    status, revenue, _ = await ledger.get(f"/v1/ledger/revenue?from={day}&to={day}")
    assert status == 200, revenue
    assert revenue["verified"] and revenue["comparison"] == []
    assert sum(Decimal(g["amount"]) for g in revenue["groups"]) == Decimal("187.40")
    # A sale recorded after the commit is revenue the ledger has not seen: the audit names its group.
    await books.sell_online({"SOCKS": 1})
    status, revenue, _ = await ledger.get(f"/v1/ledger/revenue?from={day}&to={day}")
    assert [(d["channel"], d["location_id"]) for d in revenue["comparison"]] == [("online", "wh-1")], revenue


class CrashAfterAppend:
    """The real embedded ledger, but finance 'dies' right after the ledger commits its n-th append:
    the entries are in the log, their receipts never reach finance.ledger_commits."""

    def __init__(self, real: Any, crash_on: int) -> None:
        self.real, self.crash_on, self.calls = real, crash_on, 0

    async def append(self, entries: list[dict[str, Any]], submission: Submission) -> Any:
        receipts = await self.real.append(entries, submission)
        self.calls += 1
        if self.calls == self.crash_on:
            raise ConnectionResetError("finance lost its connection right after the ledger committed")
        return receipts


@pytest.mark.parametrize("crash_on", [1, 2], ids=["after-the-sales", "after-the-summary"])
async def test_a_commit_cut_off_after_the_ledger_wrote_resumes_without_writing_twice(
        books: Books, settings: Settings, make_key: Any, crash_on: int) -> None:
    for lines in ({"TEE": 1}, {"CAP": 2}):
        order = await books.sell_online(lines)
        await books.settle(payment(order["id"], order["total"]))
    run = await books.run(await books.day_of("wh-1"))
    async with open_ledger(settings, checkpoint_signer=member_identity(settings, "ledger")) as real:
        ledger = CrashAfterAppend(real, crash_on)
        async with TestClient(TestServer(create_app(settings, ledger=ledger))) as client:
            first = Api(client, await make_key("finance"))
            status, body, _ = await first.post(f"/v1/reconciliations/{run['id']}/commit")
            assert_problem(status, body, 503)
            # Another finance user retries: the summary now names someone else, yet the log's first
            # statement of each fact stands and nothing is written twice.
            second = first.as_key(await make_key("finance"))
            status, out, _ = await second.post(f"/v1/reconciliations/{run['id']}/commit")
            assert status == 200 and out["status"] == "committed", out
        checkpoint = await real.cut_checkpoint()
        assert checkpoint is not None and checkpoint["tree_size"] == 3  # two sales and one summary
        recorded = await books.pool.fetch("SELECT entry_key, receipt FROM finance.ledger_commits ORDER BY entry_key")
        assert len(recorded) == 3
        for row in recorded:
            entry = await real.entry(row["receipt"]["seq"])
            assert entry["entry"]["entry_key"] == row["entry_key"]
            assert entry["leaf_hash"] == row["receipt"]["leaf_hash"]
        assert (await real.audit()).ok


class PauseAfterAppend:
    """The real embedded ledger; the first append, once the ledger has committed it, waits for `go`
    before finance hears the receipts (a slow network, a busy finance instance)."""

    def __init__(self, real: Any) -> None:
        self.real, self.appended, self.go, self.calls = real, asyncio.Event(), asyncio.Event(), 0

    async def append(self, entries: list[dict[str, Any]], submission: Any) -> Any:
        receipts = await self.real.append(entries, submission)
        self.calls += 1
        if self.calls == 1:
            self.appended.set()
            await self.go.wait()
        return receipts


async def test_a_newer_run_committed_while_an_older_ones_commit_is_in_flight_records_each_sale_once(
        books: Books, settings: Settings, make_key: Any) -> None:
    """Two finance instances (or users): run 1's commit has put its sales on the ledger but not yet recorded
    the receipts when run 2 of the same day supersedes it and commits the same sales. Both finish; each
    sale is on the ledger and in finance's record once, under the receipt the ledger gave it."""
    for lines in ({"TEE": 1}, {"CAP": 2}):
        order = await books.sell_online(lines)
        await books.settle(payment(order["id"], order["total"]))
    day = await books.day_of("wh-1")
    first_run = await books.run(day)
    async with open_ledger(settings, checkpoint_signer=member_identity(settings, "ledger")) as real:
        slow = PauseAfterAppend(real)
        async with TestClient(TestServer(create_app(settings, ledger=slow))) as one, \
                TestClient(TestServer(create_app(settings, ledger=real))) as two:
            key = await make_key("finance")
            first = asyncio.create_task(Api(one, key).post(f"/v1/reconciliations/{first_run['id']}/commit"))
            await asyncio.wait_for(slow.appended.wait(), 10)
            second_run = await books.run(day)
            status, out, _ = await Api(two, key).post(f"/v1/reconciliations/{second_run['id']}/commit")
            assert status == 200, out
            slow.go.set()
            status, out, _ = await first
            assert status == 200 and out["already"] >= 0, out
        recorded = await books.pool.fetch("SELECT entry_key, receipt FROM finance.ledger_commits")
        sales = [r for r in recorded if r["entry_key"].startswith("sale:")]
        assert len(sales) == 2
        for row in recorded:
            assert (await real.entry(row["receipt"]["seq"]))["entry"]["entry_key"] == row["entry_key"]
        assert (await real.audit()).ok


async def test_finance_signs_its_commits_and_co_signs_the_ledgers_checkpoints_in_its_own_process(
        books: Books, service: ServiceFactory, make_key: Any, settings: Settings) -> None:
    """Finance's default wiring: each batch signed with finance's key in finance's process; the ledger
    service cuts a checkpoint on its timer; finance's background task co-signs it; the export verifies."""
    order = await books.sell_online({"TEE": 1})
    await books.settle(payment(order["id"], order["total"]))
    run = await books.run(await books.day_of("wh-1"))
    status, out, _ = await books.finance.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200 and out["written"] == 2, out
    batch = await books.pool.fetchrow("SELECT org, statement FROM ledger.batches")
    assert (batch["org"], batch["statement"]) == ("finance", "submission")
    auditor = (await service("ledger", ledger_checkpoint_interval_s=0.1)).as_key(await make_key("auditor"))
    await service("finance", finance_cosign_interval_s=0.1)  # another finance instance, quick to co-sign
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status, checkpoint, _ = await auditor.get("/v1/ledger/checkpoint")
        if status == 200 and checkpoint["tree_size"] == 2 and not checkpoint["missing_signers"]:
            break
        assert asyncio.get_running_loop().time() < deadline, checkpoint
        await asyncio.sleep(0.1)
    assert [s["org"] for s in checkpoint["signatures"]] == ["ledger", "finance"]
    status, bundle, _ = await auditor.get("/v1/ledger/export", params={"from": 0, "to": 1})
    assert status == 200, bundle
    assert verify_bundle(bundle, TrustStore.from_dir(msp_dir(settings.data_dir))).ok
