"""Every page of the console, as each kind of person: the pages of their own area open and pass axe-core
with no serious violation; every other area's pages are a 403 page (and pass axe too); a form posted from
another site, or without its token, is refused and changes nothing."""

from __future__ import annotations

import pytest
from aiohttp import web
from playwright.async_api import Page

from services.console.app import PAGE_MODULES
from services.console.web import AREAS
from shared.embedded_db import free_port
from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, sign_in

# Swagger UI is a third-party widget whose own markup axe faults (contrast of its badges, nested
# buttons); the console's part of that page (navigation, headings) is still checked.
THIRD_PARTY = {"/reference/{service}": ("#swagger",)}
# Answers that are not pages: downloads, event streams, documents.
NOT_PAGES = (".json", ".csv", "/events", "/export", "/download")


def page_paths() -> list[str]:
    """Every GET route of the console's page modules without a path parameter (those are reached from
    links of these in each area's own journey tests), plus one reference page."""
    paths = set()
    for module in PAGE_MODULES:
        for route in module.routes:
            if isinstance(route, web.RouteDef) and route.method == "GET" and "{" not in route.path \
                    and not route.path.endswith(NOT_PAGES) and route.path not in ("/", "/sign-in"):
                paths.add(route.path)
    return sorted(paths | {"/reference/inventory"})


def area_of(path: str) -> str | None:
    first = path.strip("/").split("/")[0]
    return first if first in AREAS else None


PEOPLE = [("store", "store-0001"), ("ops", None), ("finance", None), ("auditor", None)]


@pytest.mark.parametrize(("role", "location"), PEOPLE, ids=[role for role, _ in PEOPLE])
async def test_every_page_opens_for_its_people_only_and_passes_axe(
        page: Page, console_stack: Stack, console_user: UserFactory, role: str, location: str | None) -> None:
    base = console_stack.url("console")
    await console_user(f"demo-{role}", role=role, location_id=location)
    await sign_in(page, base, f"demo-{role}", PASSWORD)
    seen: list[str] = []
    for path in page_paths():
        area = area_of(path)
        response = await page.goto(base + path)
        assert response is not None
        allowed = area is None or role in AREAS[area]
        assert response.status == (200 if allowed else 403), (role, path, response.status)
        exclude = THIRD_PARTY.get("/reference/{service}", ()) if path.startswith("/reference/") else ()
        await assert_accessible(page, exclude)
        seen.append(path)
    assert any(role in AREAS[area] for p in seen if (area := area_of(p))), f"no page of a {role}'s own area"


async def test_a_form_from_another_site_is_refused_and_the_session_goes_on(
        page: Page, console_stack: Stack, console_user: UserFactory) -> None:
    """The attacker's page (another origin) auto-submits a sign-out form to the console: refused."""
    base = console_stack.url("console")
    await console_user("olga", role="ops")
    await sign_in(page, base, "olga", PASSWORD)

    async def evil(request: web.Request) -> web.Response:
        html = (f'<!doctype html><title>win a prize</title><form id="f" method="post" action="{base}/sign-out">'
                '<input name="csrf_token" value="guessed"></form><script>document.getElementById("f").submit()'
                '</script>')
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", evil)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with page.expect_navigation(url=f"{base}/sign-out"):
            await page.goto(f"http://127.0.0.1:{port}/")
        assert "Not for this account" in await page.content() or "security token" in await page.content()
    finally:
        await runner.cleanup()
    # Still signed in: the forged sign-out changed nothing.
    response = await page.goto(f"{base}/reference")
    assert response is not None and response.status == 200 and page.url == f"{base}/reference"


async def test_a_request_without_the_token_is_refused_in_the_page(
        page: Page, console_stack: Stack, console_user: UserFactory) -> None:
    base = console_stack.url("console")
    await console_user("olga", role="ops")
    await sign_in(page, base, "olga", PASSWORD)
    await page.goto(f"{base}/reference")
    status = await page.evaluate("async () => (await fetch('/sign-out', {method: 'POST'})).status")
    assert status == 403
    response = await page.goto(f"{base}/reference")
    assert response is not None and response.status == 200  # still signed in


@pytest.mark.parametrize(("role", "location"), PEOPLE, ids=[role for role, _ in PEOPLE])
async def test_every_page_of_an_area_fits_a_390_px_phone(
        phone: Page, console_stack: Stack, console_user: UserFactory, role: str, location: str | None) -> None:
    """Nothing wider than the screen outside the tables' own scrolling regions."""
    base = console_stack.url("console")
    await console_user(f"phone-{role}", role=role, location_id=location)
    await sign_in(phone, base, f"phone-{role}", PASSWORD)
    too_wide = {}
    for path in page_paths():
        area = area_of(path)
        if path.startswith("/reference/") or (area is not None and role not in AREAS[area]):
            continue  # Swagger UI lays itself out; other areas' pages are only a 403 page
        await phone.goto(base + path)
        width = await phone.evaluate("() => document.documentElement.scrollWidth")
        if width > 390:
            too_wide[path] = width
    assert too_wide == {}


async def test_signing_in_and_filtering_work_by_keyboard_alone(page: Page, console_stack: Stack,
                                                              console_user: UserFactory) -> None:
    base = console_stack.url("console")
    await console_user("kim", role="ops")
    await page.goto(f"{base}/sign-in")
    # Tab from the top: the skip link first, then the form's fields in order.
    await page.keyboard.press("Tab")
    assert await page.evaluate("() => document.activeElement.className") == "skip"
    while await page.evaluate("() => document.activeElement.name") != "username":
        await page.keyboard.press("Tab")
    await page.keyboard.type("kim")
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    assert page.url == f"{base}/ops"
    await page.focus("#f-sku_prefix")
    await page.keyboard.type("NOTHING")
    async with page.expect_navigation(url=lambda url: "sku_prefix=NOTHING" in url):
        await page.keyboard.press("Enter")
    assert "No stock levels match." in await page.locator("#levels").inner_text()
