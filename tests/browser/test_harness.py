"""The harness itself: Debian's chromium opens the console of a full stack, axe-core checks a page, and a
person signs in through the real form."""

from __future__ import annotations

import json
from importlib.resources import files

from playwright.async_api import Browser, Page

from services.console.sessions import COOKIE
from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, axe, sign_in


async def test_the_browser_is_debians_chromium_with_the_pinned_major(browser: Browser) -> None:
    bundled = json.loads(files("playwright").joinpath("driver/package/browsers.json").read_text())
    expected = next(b["browserVersion"] for b in bundled["browsers"] if b["name"] == "chromium")
    assert browser.version.split(".")[0] == expected.split(".")[0], (
        f"chromium {browser.version} but playwright speaks {expected}: move the pin in pyproject.toml")


async def test_the_sign_in_page_loads_with_no_serious_accessibility_violation(page: Page, console_stack: Stack) -> None:
    response = await page.goto(f"{console_stack.url('console')}/sign-in")
    assert response is not None and response.status == 200
    assert await page.title() == "Sign in · omnistock"
    await assert_accessible(page)


async def test_axe_finds_a_serious_violation_where_there_is_one(page: Page, console_stack: Stack) -> None:
    """So that an empty list above means a checked page, not a check that never ran under the page's CSP."""
    await page.goto(f"{console_stack.url('console')}/sign-in")
    await page.evaluate("() => document.querySelector('form').append(document.createElement('input'))")
    assert "label" in {v["id"] for v in await axe(page)}


async def test_a_signed_out_visitor_asking_for_a_page_is_sent_to_sign_in(page: Page, console_stack: Stack) -> None:
    await page.goto(f"{console_stack.url('console')}/store")
    assert page.url.startswith(f"{console_stack.url('console')}/sign-in")
    assert await page.locator("input[name=password]").count() == 1


async def test_a_person_signs_in_through_the_form_and_lands_on_their_area(
        page: Page, console_stack: Stack, console_user: UserFactory) -> None:
    await console_user("alice", role="store", location_id="store-0001")
    await sign_in(page, console_stack.url("console"), "alice", PASSWORD)
    assert page.url == f"{console_stack.url('console')}/store"
    assert "Signed in as Alice (store, store-0001)" in await page.locator("footer").inner_text()


async def test_a_wrong_password_keeps_the_visitor_on_the_sign_in_page(
        page: Page, console_stack: Stack, console_user: UserFactory) -> None:
    await console_user("bob", role="finance")
    await sign_in(page, console_stack.url("console"), "bob", "not the password at all")
    assert page.url.startswith(f"{console_stack.url('console')}/sign-in")
    assert await page.locator("input[name=password]").count() == 1
    assert COOKIE not in {c["name"] for c in await page.context.cookies()}


async def test_the_sign_in_page_runs_its_vendored_scripts_under_its_csp_with_nothing_refused(
        page: Page, console_stack: Stack) -> None:
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on("response", lambda resp: problems.append(f"{resp.status}: {resp.url}") if resp.status >= 400 else None)
    response = await page.goto(f"{console_stack.url('console')}/sign-in", wait_until="load")
    assert response is not None and "script-src 'self'" in (await response.all_headers())["content-security-policy"]
    assert await page.evaluate("() => typeof window.htmx === 'object' && htmx.version.startsWith('2.')")
    assert problems == []


async def test_the_sign_in_page_fits_a_phone_without_sideways_scrolling(phone: Page, console_stack: Stack) -> None:
    await phone.goto(f"{console_stack.url('console')}/sign-in")
    assert await phone.evaluate("() => document.documentElement.scrollWidth") <= 390
    await phone.tap("input[name=username]")
    assert await phone.evaluate("() => document.activeElement.name") == "username"
