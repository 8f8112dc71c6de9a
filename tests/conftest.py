"""One PostgreSQL per test session (per xdist worker), a migrated template, a fresh clone per test.

TEST_DATABASE_URL points the suite at an existing server instead of starting the embedded one (its user
must be allowed to create roles). The service roles (shared/roles.py) are cluster-wide: they get their
passwords once per session; their grants live in the template and come along with every clone. Apps
under test connect as their service's role, so the grants are proven sufficient by the whole suite;
tests that arrange data directly use the owner's `pool`.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from ledger.identity import init_identities
from services import registry
from shared.auth import create_api_key
from shared.db import create_pool, init_connection
from shared.embedded_db import EmbeddedPostgres, free_port
from shared.http.runner import ServiceRunner
from shared.logging import configure_logging
from shared.migrations import CORE_MIGRATIONS
from shared.roles import ROLE_OF, ensure_logins, prepare_database
from shared.settings import Settings

ADMIN_KEY = "osk_test_bootstrap_admin_key_0123456789abcdef"
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_counter = itertools.count()
configure_logging("warning", "console")


def with_database(url: str, name: str) -> str:
    return str(URL(url).with_path(f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    # Not under pytest's basetemp: pytest prunes old basetemp folders of other sessions, which would pull
    # the data directory out from under a concurrently running suite.
    root = Path(tempfile.mkdtemp(prefix="omnistock-test-pg-"))
    server = EmbeddedPostgres(root / "data", free_port(), durable=False)
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def role_passwords(server_url: str) -> dict[str, str]:
    """Service -> its role's password for this session (set on the server once, here). Derived from the
    server's URL (which holds the owner's password), so xdist workers sharing a TEST_DATABASE_URL agree."""
    passwords = {service: hashlib.sha256(f"{server_url}|{service}".encode()).hexdigest() for service in ROLE_OF}

    async def login() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await ensure_logins(conn, {s: role_url(server_url, s, pw) for s, pw in passwords.items()})
        finally:
            await conn.close()

    asyncio.run(login())
    return passwords


def role_url(url: str, service: str, password: str) -> str:
    return str(URL(url).with_user(ROLE_OF[service]).with_password(password))


@pytest.fixture(scope="session")
def template_db(server_url: str, role_passwords: dict[str, str]) -> str:
    name = f"omnistock_tpl_{WORKER}"

    async def build() -> None:
        admin = await asyncpg.connect(server_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        conn = await asyncpg.connect(with_database(server_url, name))
        await init_connection(conn)
        await prepare_database(conn, [CORE_MIGRATIONS, *registry.all_migrations()])
        await conn.close()

    asyncio.run(build())
    return name


@pytest.fixture
async def database_url(server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database cloned from the migrated template, dropped afterwards."""
    name = f"t_{WORKER}_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield with_database(server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def service_urls(database_url: str, role_passwords: dict[str, str]) -> dict[str, str]:
    """Service -> the URL its role logs in with, on this test's database."""
    return {service: role_url(database_url, service, pw) for service, pw in role_passwords.items()}


@pytest.fixture
def database_env(database_url: str, service_urls: dict[str, str]) -> dict[str, str]:
    """The environment a process under test needs: the owner's URL and one per service role."""
    return {"DATABASE_URL": database_url,
            **{f"OMNISTOCK_{service.upper()}_DATABASE_URL": url for service, url in service_urls.items()}}


@pytest.fixture
def settings(database_url: str, service_urls: dict[str, str], tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        **{f"{service}_database_url": url for service, url in service_urls.items()},
        data_dir=tmp_path / "data",
        bootstrap_admin_key=ADMIN_KEY,
        log_level="warning",
        sse_heartbeat_s=0.5,
        event_poll_interval_s=0.1,
        auth_cache_ttl_s=0,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=60)
    yield p
    await p.close()


@dataclass
class Api:
    """An HTTP client for one service that sends a given API key."""

    client: TestClient
    key: str | None = ADMIN_KEY

    def as_key(self, key: str | None) -> Api:
        return Api(self.client, key)

    def _headers(self, headers: dict[str, str] | None, idempotency_key: str | None) -> dict[str, str]:
        out = dict(headers or {})
        if self.key is not None:
            out.setdefault("Authorization", f"Bearer {self.key}")
        if idempotency_key is not None:
            out["Idempotency-Key"] = idempotency_key
        return out

    async def request(self, method: str, path: str, *, json: Any = None, data: Any = None,
                      headers: dict[str, str] | None = None, idem: str | None = None,
                      params: Any = None) -> tuple[int, Any, Any]:
        resp = await self.client.request(method, path, json=json, data=data, params=params,
                                         headers=self._headers(headers, idem))
        ctype = resp.headers.get("Content-Type", "")
        body = await resp.json(content_type=None) if "json" in ctype else await resp.text()
        return resp.status, body, resp

    async def get(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("GET", path, **kw)

    async def put(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("PUT", path, **kw)

    async def post(self, path: str, **kw: Any) -> tuple[int, Any, Any]:
        return await self.request("POST", path, **kw)


class ServiceFactory(Protocol):
    def __call__(self, name: str, **overrides: Any) -> Awaitable[Api]: ...


class ServiceTestServer(TestServer):
    """A test server run the way `omnistock serve` runs a service: ServiceRunner, connection guard and all."""

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ServiceRunner(self.app, **kwargs)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[ServiceFactory]:
    """Start a service app on a real socket: `api = await service("inventory")`; keyword arguments
    override settings for that instance (`await service("inventory", header_timeout_s=0.5)`)."""
    clients: list[TestClient] = []

    async def start(name: str, **overrides: Any) -> Api:
        app_settings = settings.model_copy(update=overrides) if overrides else settings
        if name in ("ledger", "finance"):  # as an operator runs `omnistock ledger init` before serving them
            init_identities(app_settings.data_dir)
        client = TestClient(ServiceTestServer(registry.load(name).create_app(app_settings)))
        await client.start_server()
        clients.append(client)
        return Api(client)

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
def make_key(pool: asyncpg.Pool) -> Callable[..., Awaitable[str]]:
    async def make(role: str, location_id: str | None = None) -> str:
        async with pool.acquire() as conn:
            return await create_api_key(conn, role, location_id)

    return make


def assert_problem(status: int, body: Any, expected_status: int, code: str | None = None,
                   field: str | None = None) -> None:
    assert status == expected_status, body
    assert body["status"] == expected_status
    assert {"type", "title", "status", "detail"} <= set(body)
    if code is not None:
        assert body["type"].endswith("/" + code), body["type"]
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])] or body.get("field") == field, body
