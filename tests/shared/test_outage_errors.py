"""A database outage is a 503 whichever exception carries it out of the handler; a bug stays a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.http.api import Api, Call
from shared.http.app import create_service_app
from shared.http.middleware import during_outage
from shared.settings import Settings
from tests.conftest import ADMIN_KEY


def rollback_after_server_closed() -> Exception:
    """What asyncpg raised in a drill: the rollback on a connection the server had just terminated."""
    try:
        try:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        except asyncpg.ConnectionDoesNotExistError:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15") from None
    except asyncpg.exceptions.InternalClientError as exc:
        return exc


def test_an_error_raised_while_handling_an_outage_is_an_outage() -> None:
    assert during_outage(rollback_after_server_closed())
    assert during_outage(asyncpg.exceptions.CrashShutdownError("crash of another server process"))
    assert during_outage(asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"))
    # The same error on a pooled connection the server had terminated earlier, with nothing chained.
    assert during_outage(asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation"
                                                                " (2) is in progress"))
    assert not during_outage(RuntimeError("a bug"))
    assert not during_outage(asyncpg.UniqueViolationError("duplicate key"))


def failing_api() -> Api:
    api = Api("outage-test")

    @api.get("/outage", public=True)
    async def outage(call: Call[None, None]) -> None:
        """Fails the way a drill saw it."""
        raise rollback_after_server_closed()

    @api.get("/bug", public=True)
    async def bug(call: Call[None, None]) -> None:
        """Fails like a bug."""
        raise RuntimeError("a bug")

    return api


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[TestClient]:
    settings = Settings(_env_file=None, database_url=database_url, bootstrap_admin_key=ADMIN_KEY,  # type: ignore[call-arg]
                        log_level="error")
    async with TestClient(TestServer(create_service_app("outage-test", settings, failing_api(), migrations=[]))) as c:
        yield c


async def test_outage_is_503_and_bug_is_500(client: TestClient) -> None:
    outage = await client.get("/outage")
    assert outage.status == 503
    assert (await outage.json(content_type=None))["type"].endswith("/service-unavailable")
    bug = await client.get("/bug")
    assert bug.status == 500
    assert bug.headers["Content-Type"].startswith("application/problem+json")
