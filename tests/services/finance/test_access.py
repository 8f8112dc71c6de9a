"""Finance writes; auditors read runs and reports; every other role gets 403, and no key 401."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_problem
from tests.services.finance.conftest import Books, payment

WRITES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/settlements", {"json": [payment("A-1", "1.00", external_id="acc")]}),
    ("/v1/closeouts", {"json": {"location_id": "store-a", "business_day": "2024-05-01", "currency": "EUR",
                                "tenders": [{"kind": "cash", "amount": "1.00"}]}}),
    ("/v1/reconciliations", {"json": {"business_day": "2024-05-01"}}),
    ("/v1/reconciliations/{run}/items/1/resolution", {"json": {"action": "write_off", "reason": "x"}}),
    ("/v1/reconciliations/{run}/commit", {}),
]
READS = ["/v1/reconciliations", "/v1/reconciliations/{run}", "/v1/reconciliations/{run}/items",
         "/v1/reports/revenue?from=2024-05-01&to=2024-05-02", "/v1/reports/revenue.csv?from=2024-05-01&to=2024-05-01",
         "/v1/settlements", "/v1/closeouts?business_day=2024-05-01"]


@pytest.fixture
async def run_id(books: Books) -> int:
    await books.settle(payment("ghost", "1.00", external_id="g", settled_at=None))
    run = await books.run(await books.pool.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date"))
    return int(run["id"])


@pytest.mark.parametrize("role", ["admin", "ops", "store", "shop", "auditor"])
async def test_only_finance_writes(books: Books, make_key: Any, run_id: int, role: str) -> None:
    api = books.finance.as_key(await make_key(role, "store-a" if role == "store" else None))
    for path, kw in WRITES:
        status, body, _ = await api.post(path.format(run=run_id), **kw)
        assert_problem(status, body, 403, "forbidden")
    assert await books.pool.fetchval("SELECT count(*) FROM finance.runs") == 1
    assert await books.pool.fetchval("SELECT count(*) FROM finance.closeouts") == 0


@pytest.mark.parametrize("role", ["admin", "ops", "store", "shop"])
async def test_other_roles_read_nothing(books: Books, make_key: Any, run_id: int, role: str) -> None:
    api = books.finance.as_key(await make_key(role, "store-a" if role == "store" else None))
    for path in READS:
        status, body, _ = await api.get(path.format(run=run_id))
        assert_problem(status, body, 403, "forbidden")


@pytest.mark.parametrize("role", ["auditor", "finance"])
async def test_auditors_and_finance_read_runs_and_reports(books: Books, make_key: Any, run_id: int,
                                                          role: str) -> None:
    api = books.finance.as_key(await make_key(role))
    for path in READS:
        status, body, _ = await api.get(path.format(run=run_id))
        assert status == 200, (path, body)


async def test_no_key_is_401(books: Books, run_id: int) -> None:
    anonymous = books.finance.as_key(None)
    status, body, _ = await anonymous.get(f"/v1/reconciliations/{run_id}")
    assert_problem(status, body, 401)
    status, body, _ = await anonymous.post("/v1/reconciliations", json={"business_day": "2024-05-01"})
    assert_problem(status, body, 401)


async def test_finance_may_do_every_write(books: Books, run_id: int) -> None:
    statuses = []
    for path, kw in WRITES[:4]:
        status, body, _ = await books.finance.post(path.format(run=run_id), **kw)
        statuses.append(status)
    assert statuses == [201, 201, 201, 201]
