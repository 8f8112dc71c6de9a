"""An auditor's round in a real browser: the whole-log audit polled by htmx until the ledger's run ends,
the revenue audit with its differences, find by order id, an entry and its proof, a consistency proof;
every page passes axe and fits a 390 px phone."""

from __future__ import annotations

import re

import asyncpg
import pytest
from playwright.async_api import Page, expect

from ledger.postgres.repository import AUDIT_LOCK_KEY
from shared.settings import Settings
from tests.browser.conftest import PASSWORD, Stack, UserFactory, signed_and_cosigned
from tests.browser.harness import assert_accessible, sign_in
from tests.ledger.conftest import sale


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ledger_audit_wait_s": 0})  # 202 at once while the audit runs


async def test_an_auditors_round(page: Page, console_stack: Stack, console_user: UserFactory, make_key,  # type: ignore[no-untyped-def]
                                 pool: asyncpg.Pool) -> None:
    base = console_stack.url("console")
    entries = [{**sale(n), "entry_key": f"sale:o-{n}:2024-05-01"} for n in range(3)]
    await signed_and_cosigned(console_stack, await make_key("finance"), entries, "audit-journey")
    await console_user("ada", role="auditor")
    await sign_in(page, base, "ada", PASSWORD)

    async with pool.acquire() as other_replica:  # another replica's audit run holds this one back
        await other_replica.execute("SELECT pg_advisory_lock($1)", AUDIT_LOCK_KEY)
        await page.goto(f"{base}/audit/revenue")
        await expect(page.locator("#log-audit")).to_contain_text("checking the whole log")
        await assert_accessible(page)
        await other_replica.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)
    # htmx polls the block every 2 s and swaps in the result when the run ends, with no reload.
    await expect(page.locator("#log-audit")).to_contain_text("verified: 3 entries", timeout=15_000)
    await expect(page.locator("#log-audit[hx-trigger]")).to_have_count(0)

    await page.get_by_label(re.compile("^From")).fill("2024-05-01")
    await page.get_by_label(re.compile("^To")).fill("2024-05-01")
    await page.get_by_role("button", name="Audit").click()
    await expect(page.locator("main")).to_contain_text("differs by 30.00")  # finance has no revenue that day
    await assert_accessible(page)

    await page.goto(f"{base}/audit/find")
    await page.get_by_label(re.compile("order id")).fill("o-2")
    await page.keyboard.press("Enter")
    await page.get_by_role("link", name="Entry 2").click()
    await expect(page).to_have_url(f"{base}/audit/entries/2")
    await assert_accessible(page)

    await page.goto(f"{base}/audit/consistency?first=1&second=3")
    await assert_accessible(page)

    await page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/audit", "/audit/revenue?from=2024-05-01&to=2024-05-01", "/audit/find?q=o-2", "/audit/entries/2",
                 "/audit/consistency?first=1&second=3", "/audit/export", "/audit/verify"):
        await page.goto(base + path)
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390, path
