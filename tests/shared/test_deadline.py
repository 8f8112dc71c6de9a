"""Every request ends by its deadline, even when the work (and its cleanup) does not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.http.api import Api, Call
from shared.http.app import create_service_app
from shared.http.deadline import DeadlineExceeded, abandoned_tasks, within_deadline
from shared.settings import Settings
from tests.conftest import ADMIN_KEY


async def stuck_even_when_cancelled(release: asyncio.Event) -> str:
    """Like a query on a frozen server: cancelling it does not end it, its cleanup waits too."""
    try:
        await asyncio.sleep(3600)
    finally:
        await release.wait()
    return "never"


async def test_answers_at_the_deadline_although_the_work_will_not_end() -> None:
    release = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="did not finish within 0.2 s"):
        await within_deadline(stuck_even_when_cancelled(release), 0.2)
    assert time.monotonic() - started < 1.0
    assert abandoned_tasks() == 1  # kept alive until its cleanup ends
    release.set()
    for _ in range(100):
        if abandoned_tasks() == 0:
            break
        await asyncio.sleep(0.01)
    assert abandoned_tasks() == 0


async def test_results_and_errors_pass_through() -> None:
    async def value() -> int:
        return 42

    async def failing() -> None:
        raise ValueError("the work's own error")

    assert await within_deadline(value(), 1.0) == 42
    with pytest.raises(ValueError, match="the work's own error"):
        await within_deadline(failing(), 1.0)


async def test_cancelling_the_caller_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(within_deadline(work(), 60))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 1.0)


def slow_api() -> Api:
    api = Api("deadline-test")

    @api.get("/slow", public=True)
    async def slow(call: Call[None, None]) -> dict[str, str]:
        """Waits 2 s."""
        await asyncio.sleep(2)
        return {"status": "done"}

    @api.get("/slow-report", public=True, long_running=True)
    async def slow_report(call: Call[None, None]) -> dict[str, str]:
        """Waits 0.5 s, which its long deadline allows."""
        await asyncio.sleep(0.5)
        return {"status": "done"}

    return api


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient]:
    settings = Settings(_env_file=None, database_url=database_url, bootstrap_admin_key=ADMIN_KEY,  # type: ignore[call-arg]
                        log_level="warning", request_timeout_s=0.3, long_request_timeout_s=5)
    async with TestClient(TestServer(create_service_app("deadline-test", settings, slow_api(), migrations=[]))) as c:
        yield c


async def test_a_request_past_its_deadline_is_a_503_problem(client: TestClient) -> None:
    started = time.monotonic()
    resp = await client.get("/slow")
    assert time.monotonic() - started < 1.5
    assert resp.status == 503
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["type"].endswith("/deadline-exceeded")
    assert "Idempotency-Key" in body["detail"]


async def test_long_running_routes_get_the_long_deadline(client: TestClient) -> None:
    resp = await client.get("/slow-report")
    assert resp.status == 200
    assert await resp.json() == {"status": "done"}
