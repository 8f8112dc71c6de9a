"""Console test helpers: users made as the owner, and a browser-like client that keeps cookies."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.console.users import User, create_user
from tests.conftest import Api, ServiceFactory

PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def make_user(pool: asyncpg.Pool) -> Callable[..., Awaitable[User]]:
    async def make(username: str, role: str = "ops", location_id: str | None = None,
                   password: str = PASSWORD) -> User:
        async with pool.acquire() as conn:
            if location_id is not None:
                await conn.execute(
                    "INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup)"
                    " VALUES ($1, $1, 'store', 51.5, -0.1, true, true)"
                    " ON CONFLICT DO NOTHING", location_id)
            return await create_user(conn, username=username, display_name=username.title(), role=role,
                                     location_id=location_id, password=password)

    return make


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "no csrf_token field on the page"
    return found.group(1)


async def sign_in(client: TestClient, username: str, password: str = PASSWORD, **extra: str) -> Any:
    page = await client.get("/sign-in")
    token = csrf_of(await page.text())
    return await client.post("/sign-in", data={"username": username, "password": password, "csrf_token": token,
                                               **extra}, allow_redirects=False)


@pytest.fixture
def console_with(service: ServiceFactory) -> Callable[..., Awaitable[dict[str, Api]]]:
    """Start the named services, then the console pointed at them: `apps = await console_with("inventory")`;
    `apps["console"].client` is a cookie-keeping browser stand-in, the others are admin API clients."""

    async def start(*names: str, **overrides: Any) -> dict[str, Api]:
        apps = {name: await service(name) for name in names}
        urls = {f"{name}_url": str(api.client.make_url("")).rstrip("/") for name, api in apps.items()}
        apps["console"] = await service("console", **urls, **overrides)
        return apps

    return start
