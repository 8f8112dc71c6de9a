"""GET /v1/ledger/audit as a background job: concurrent callers share one run, a result is served again
for the same tree size, a grown tree or an aged result starts a new run, a slow run answers 202 with the
job's status and the last result marked stale, and one replica's run waits for another's lock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from ledger.postgres.repository import AUDIT_LOCK_KEY
from ledger.service.audit_job import STATUS_PATH, AuditJobs
from ledger.service.routes import AUDIT
from shared.settings import Settings
from tests.conftest import Api, ServiceFactory, assert_problem
from tests.ledger.conftest import sale, summary
from tests.ledger.test_ledger_service import signed
from tests.ledger.test_ledger_tamper import CHANGE_PAYLOAD_13, behind_the_back
from tests.polling import eventually

MakeKey = Callable[..., Awaitable[str]]


class Books:
    def __init__(self, api: Api, finance: Api, auditor: Api, settings: Settings) -> None:
        self.api, self.finance, self.auditor, self.settings = api, finance, auditor, settings

    @property
    def jobs(self) -> AuditJobs:
        return self.api.client.app[AUDIT]

    async def append(self, first: int, count: int) -> None:
        entries = [sale(first + i) for i in range(count)]
        status, body, _ = await self.finance.post("/v1/ledger/entries", idem=f"append-{first}",
                                                  json=signed(entries, self.settings))
        assert status == 201, body

    async def audit(self) -> tuple[int, Any, Any]:
        return await self.auditor.get("/v1/ledger/audit")


@pytest.fixture
def books_with(service: ServiceFactory, make_key: MakeKey, settings: Settings) -> Callable[..., Awaitable[Books]]:
    async def start(**overrides: Any) -> Books:
        api = await service("ledger", **overrides)
        books = Books(api, api.as_key(await make_key("finance")), api.as_key(await make_key("auditor")), settings)
        status, body, _ = await books.finance.post("/v1/ledger/entries", idem="seed",
                                                   json=signed([summary()] + [sale(n) for n in range(1, 20)], settings))
        assert status == 201, body
        return books

    return start


async def test_requests_while_a_run_is_at_work_join_it_and_start_no_other(
        books_with: Callable[..., Awaitable[Books]], pool: asyncpg.Pool) -> None:
    books = await books_with(ledger_audit_wait_s=0)
    async with pool.acquire() as other_replica:  # holds the run back, so every request below meets it
        await other_replica.execute("SELECT pg_advisory_lock($1)", AUDIT_LOCK_KEY)
        answers = await asyncio.gather(*(books.audit() for _ in range(8)))
        assert [status for status, _, _ in answers] == [202] * 8, answers
        assert books.jobs.runs == 1
        await other_replica.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)

    async def done() -> Any:
        status, result, _ = await books.audit()
        return result if status == 200 else None

    assert (await eventually(done))["ok"]
    assert books.jobs.runs == 1


async def test_concurrent_audit_requests_share_one_result(books_with: Callable[..., Awaitable[Books]]) -> None:
    books = await books_with()
    answers = await asyncio.gather(*(books.audit() for _ in range(8)))
    assert [status for status, _, _ in answers] == [200] * 8, answers
    bodies = [body for _, body, _ in answers]
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["ok"] and bodies[0]["tree_size"] == 20 and bodies[0]["current"]
    assert books.jobs.runs == 1


async def test_the_same_tree_size_is_served_from_the_stored_result_and_a_grown_tree_runs_again(
        books_with: Callable[..., Awaitable[Books]]) -> None:
    books = await books_with()
    _, first, _ = await books.audit()
    _, again, _ = await books.audit()
    assert again == first and books.jobs.runs == 1
    await books.append(100, 5)
    status, grown, _ = await books.audit()
    assert status == 200 and grown["tree_size"] == 25 and grown["current"] and grown["ok"]
    assert grown["checked_at"] > first["checked_at"] and books.jobs.runs == 2


async def test_an_aged_result_is_checked_again_and_tampering_that_keeps_the_size_shows(
        books_with: Callable[..., Awaitable[Books]], pool: asyncpg.Pool) -> None:
    books = await books_with(ledger_audit_max_age_s=0)
    status, clean, _ = await books.audit()
    assert status == 200 and clean["ok"]
    await behind_the_back(pool, CHANGE_PAYLOAD_13)
    status, tampered, _ = await books.audit()
    assert status == 200 and not tampered["ok"] and tampered["first_bad_seq"] == 13
    assert tampered["tree_size"] == clean["tree_size"] and books.jobs.runs == 2


async def test_a_run_past_the_wait_is_202_with_the_jobs_status_and_the_last_result_marked_stale(
        books_with: Callable[..., Awaitable[Books]]) -> None:
    books = await books_with(ledger_audit_wait_s=0)
    status, body, resp = await books.audit()
    assert status == 202, body
    assert resp.headers["Location"] == STATUS_PATH and int(resp.headers["Retry-After"]) >= 1
    assert body["state"] == "running" and body["tree_size"] == 20 and body["last"] is None

    async def idle() -> Any:
        status, job, _ = await books.auditor.get(STATUS_PATH)
        assert status == 200, job
        return job if job["state"] == "idle" else None

    job = await eventually(idle)
    assert job["last"]["ok"] and job["last"]["current"] and job["last"]["tree_size"] == 20
    status, result, _ = await books.audit()
    assert status == 200 and result["current"] and books.jobs.runs == 1  # the stored one, no second run

    await books.append(200, 3)
    status, body, _ = await books.audit()
    assert status == 202 and body["tree_size"] == 23
    assert body["last"]["tree_size"] == 20 and body["last"]["current"] is False
    await eventually(idle)
    assert books.jobs.runs == 2


async def test_a_run_waits_while_another_replica_holds_the_audit_lock(
        books_with: Callable[..., Awaitable[Books]], pool: asyncpg.Pool) -> None:
    books = await books_with(ledger_audit_wait_s=0)
    async with pool.acquire() as other_replica:
        await other_replica.execute("SELECT pg_advisory_lock($1)", AUDIT_LOCK_KEY)
        status, body, _ = await books.audit()
        assert status == 202

        async def waiting() -> Any:
            job = (await books.auditor.get(STATUS_PATH))[1]
            return job if job["state"] == "waiting" else None

        await eventually(waiting)
        await asyncio.sleep(0.3)
        assert (await books.auditor.get(STATUS_PATH))[1]["state"] == "waiting"  # still: nothing ran
        await other_replica.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)

    async def done() -> Any:
        status, result, _ = await books.audit()
        return result if status == 200 else None

    assert (await eventually(done))["ok"]
    assert books.jobs.runs == 1


@pytest.mark.parametrize("role", ["admin", "ops", "store", "shop"])
async def test_only_finance_and_auditors_see_the_audit_job(service: ServiceFactory, make_key: MakeKey,
                                                           pool: asyncpg.Pool, role: str) -> None:
    api = await service("ledger")
    if role == "store":
        await pool.execute("INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup)"
                           " VALUES ('s1', 'Store 1', 'store', 52.0, 4.0, true, true)")
    key = await make_key(role, "s1" if role == "store" else None)
    status, body, _ = await api.as_key(key).get(STATUS_PATH)
    assert_problem(status, body, 403, "forbidden")
    status, body, _ = await api.as_key(key).get("/v1/ledger/audit")
    assert_problem(status, body, 403, "forbidden")
    assert api.client.app[AUDIT].runs == 0


async def lock_is_free(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        free = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", AUDIT_LOCK_KEY))
        if free:
            await conn.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)
        return free


async def test_no_run_leaves_the_audit_lock_held_done_failed_or_cancelled(
        books_with: Callable[..., Awaitable[Books]], pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's pool does not reset sessions on release: a session lock left on a pooled connection
    would hold every replica's audit back for good."""
    books = await books_with(ledger_audit_wait_s=0)

    async def done() -> Any:
        status, result, _ = await books.audit()
        return result if status == 200 else None

    assert (await eventually(done))["ok"]
    assert await lock_is_free(pool)

    async def broken() -> None:
        raise RuntimeError("the audit broke")

    await books.append(100, 1)  # a grown tree: the next request runs again
    monkeypatch.setattr(books.jobs.ledger, "audit", broken)
    await books.audit()
    await eventually(lambda: asyncio.sleep(0, result=books.jobs._job is None or None))
    assert await lock_is_free(pool)
    monkeypatch.undo()

    async with pool.acquire() as other_replica:  # the next run waits for it, and is cancelled waiting
        await other_replica.execute("SELECT pg_advisory_lock($1)", AUDIT_LOCK_KEY)
        await books.append(200, 1)
        assert (await books.audit())[0] == 202
        job = books.jobs._job
        assert job is not None and job.task is not None
        await eventually(lambda: asyncio.sleep(0, result=job.state == "waiting" or None))
        job.task.cancel()
        await asyncio.gather(job.task, return_exceptions=True)
        await other_replica.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)
    assert await lock_is_free(pool)
    assert (await eventually(done))["ok"]  # and a later request audits as usual
