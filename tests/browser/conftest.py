"""Browser tests: Debian's chromium driven by Playwright, against every service run in-process.

Playwright never downloads a browser here (`playwright install` is never run): it launches
/usr/bin/chromium (or $OMNISTOCK_CHROMIUM), which `make test` installs as root. Without it these tests
skip and say so. One browser per session (per xdist worker), started by `launch()` with a fresh
temporary profile that Playwright deletes on close; each test gets its own context (cookies, storage).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from ledger.identity import init_identities
from services import registry
from services.console.users import User, create_user
from shared.embedded_db import free_port
from shared.http.runner import ServiceRunner
from shared.settings import Settings
from tests.conftest import ADMIN_KEY
from tests.ledger.test_ledger_service import cosign_as_finance, signed

DEFAULT_CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"
# No network beyond the stack under test, no GPU on these machines, root needs --no-sandbox.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-gpu"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
READY_WITHIN_S = 20.0


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("OMNISTOCK_CHROMIUM", DEFAULT_CHROMIUM)
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.skip("Debian's chromium is not installed: `make test` installs it when run as root "
                    "(apt-get install chromium); or set OMNISTOCK_CHROMIUM")
    return path


@pytest.fixture(scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=DESKTOP)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        yield await context.new_page()
    finally:
        await context.close()


@dataclass
class Stack:
    """Every service of the registry on its own port of 127.0.0.1, each knowing all the others'."""

    settings: Settings
    admin_key: str = ADMIN_KEY
    runners: list[web.AppRunner] = field(default_factory=list)

    def url(self, name: str) -> str:
        return self.settings.base_url(name)

    async def wait_ready(self, within_s: float = READY_WITHIN_S) -> None:
        """Until every service answers 200 on /readyz (a service still starting refuses or says 503)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for name in registry.service_names():
                await _until_ready(http, f"{self.url(name)}/readyz", within_s)

    async def admin(self, method: str, name: str, path: str, json: Any = None,
                    idempotency_key: str | None = None) -> Any:
        """One call to a service's API with the admin key; fails the test on anything but 2xx."""
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        async with aiohttp.ClientSession() as http, http.request(method, f"{self.url(name)}{path}", json=json,
                                                                 headers=headers) as resp:
            body = await resp.json(content_type=None)
            assert resp.status < 300, (method, path, resp.status, body)
            return body


async def _until_ready(http: aiohttp.ClientSession, url: str, within_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not ready within {within_s}s (last: {last!r})")


@pytest.fixture
async def console_stack(settings: Settings) -> AsyncIterator[Stack]:
    names = registry.service_names()
    ports = {f"{name}_port": free_port() for name in names}
    stack = Stack(settings.model_copy(update={**ports, "host": "127.0.0.1"}))
    init_identities(stack.settings.data_dir)  # as an operator runs `omnistock ledger init` first
    try:
        for name in names:
            runner = ServiceRunner(registry.load(name).create_app(stack.settings))
            await runner.setup()
            stack.runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", stack.settings.port_for(name)).start()
        await stack.wait_ready()
        yield stack
    finally:
        for runner in reversed(stack.runners):
            await runner.cleanup()


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
def console_user(pool: asyncpg.Pool, console_stack: Stack) -> UserFactory:
    """`await console_user("alice", role="store", location_id="store-0001")`: a person who can sign in
    (password PASSWORD unless given). A store's location is created through the inventory API if new."""

    async def make(username: str, *, role: str = "ops", location_id: str | None = None,
                   password: str = PASSWORD, display_name: str | None = None) -> User:
        if location_id is not None:
            await console_stack.admin("PUT", "inventory", f"/v1/locations/{location_id}", json={
                "name": f"Store {location_id}", "kind": "store", "lat": 51.5, "lon": -0.1,
                "ship": True, "pickup": True})
        async with pool.acquire() as conn:
            return await create_user(conn, username=username, display_name=display_name or username.title(),
                                     role=role, location_id=location_id, password=password)

    return make


async def signed_and_cosigned(stack: Stack, finance_key: str, entries: list[dict[str, Any]],
                              idempotency_key: str) -> None:
    """Entries appended as finance signs them, a checkpoint cut and co-signed by finance: what an
    auditor's page then finds, proves and verifies."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {finance_key}"}) as http, \
            http.post(f"{stack.url('ledger')}/v1/ledger/entries", json=signed(entries, stack.settings),
                      headers={"Idempotency-Key": idempotency_key}) as resp:
        assert resp.status == 201, await resp.text()
    await stack.admin("GET", "ledger", "/v1/ledger/checkpoint")  # cut a checkpoint
    await cosign_as_finance(stack.settings)
