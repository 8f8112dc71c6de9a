"""An operations person at a desk: filters stock by location (htmx swaps only the table), is refused a
transfer to the same place beside the field, makes one, finds their own name in the journal, subscribes
a webhook and redelivers its dead letter; then the journal on a 390 px phone. Every page passes axe-core."""

from __future__ import annotations

import re

import aiohttp
import asyncpg
from playwright.async_api import Page, expect

from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, screenshot, sign_in

WAREHOUSE = {"name": "North warehouse", "kind": "warehouse", "lat": 53.4, "lon": -2.2, "ship": True, "pickup": False}


async def test_stock_transfer_journal_and_a_redelivered_dead_letter(
        page: Page, phone: Page, console_stack: Stack, console_user: UserFactory, pool: asyncpg.Pool) -> None:
    base = console_stack.url("console")
    await console_user("olga", role="ops", display_name="Olga Ops")
    await console_user("sam", role="store", location_id="store-0001")  # creates the store location
    await console_stack.admin("PUT", "inventory", "/v1/locations/wh-0001", json=WAREHOUSE)
    for sku in ("TEE-M", "CAP-1"):
        await console_stack.admin("PUT", "inventory", f"/v1/skus/{sku}", json={"name": sku, "price": "9.90",
                                                                             "currency": "EUR"})
    await _receive(console_stack, "TEE-M", "wh-0001", 50, "r1")
    await _receive(console_stack, "CAP-1", "store-0001", 3, "r2")

    await sign_in(page, base, "olga", PASSWORD)
    assert page.url == f"{base}/ops"
    await assert_accessible(page)
    await page.select_option("#f-location_id", "wh-0001")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(re.compile(r"/ops\?.*location_id=wh-0001"))  # htmx pushed the filter into the URL
    levels = page.locator("#levels tbody")
    await expect(levels).to_contain_text("TEE-M")
    await expect(levels).not_to_contain_text("CAP-1")
    await expect(page.get_by_role("heading", name="Stock by location")).to_have_count(1)  # swapped, not nested

    await page.get_by_role("navigation", name="Operations").get_by_role("link", name="Transfers").click()
    await page.wait_for_url(f"{base}/ops/transfers")
    await page.fill("#f-sku", "TEE-M")
    await page.select_option("#f-location_id", "wh-0001")
    await page.select_option("#f-to_location_id", "wh-0001")
    await page.fill("#f-qty", "4")
    await page.get_by_role("button", name="Transfer").click()
    await expect(page.locator("#f-to_location_id-error")).to_contain_text("another location")
    await expect(page.locator("#f-to_location_id")).to_have_attribute("aria-invalid", "true")
    await assert_accessible(page)
    assert await _on_hand(console_stack, "TEE-M", "wh-0001") == 50  # nothing moved

    await page.select_option("#f-to_location_id", "store-0001")
    await page.fill("#f-reason", "window display")
    await page.get_by_role("button", name="Transfer").click()
    await page.wait_for_url(f"{base}/ops/transfers?done=1")
    await expect(page.get_by_role("table", name="Recent transfers")).to_contain_text("olga")
    assert await _on_hand(console_stack, "TEE-M", "wh-0001") == 46

    await page.goto(f"{base}/ops/movements")
    await page.fill("#f-sku", "TEE-M")
    await page.get_by_role("button", name="Filter").click()
    await page.wait_for_url(re.compile(r"/ops/movements\?.*sku=TEE-M"))
    first = page.locator("#journal tbody tr").first
    await expect(first).to_contain_text("olga")
    await expect(first).to_contain_text("window display")
    await assert_accessible(page)
    await screenshot(page, "ops-journal")

    await page.goto(f"{base}/ops/webhooks")
    await page.fill("#f-url", "https://hooks.example.com/omnistock")
    await page.get_by_role("checkbox", name="availability.changed").check()
    await page.fill("#f-secret", "a-long-signing-secret")
    await page.get_by_role("button", name="Subscribe").click()
    await page.wait_for_url(re.compile(r"/ops/webhooks/\d+$"))
    sid = int(page.url.rsplit("/", 1)[1])
    # A dead letter as the dispatcher leaves one after its last attempt (as the e-commerce tests make it).
    delivery = await pool.fetchval(
        "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status, attempts)"
        " VALUES ($1, 1, 'availability.changed', 'TEE-M', '\\x7b7d', 'dead', 10) RETURNING id", sid)
    await page.select_option("#f-status", "dead")
    await page.get_by_role("button", name="Filter").click()
    redeliver = page.get_by_role("button", name=f"Redeliver delivery {delivery}")
    await expect(redeliver).to_be_visible()
    await assert_accessible(page)
    await redeliver.click()
    await page.wait_for_url(re.compile(rf"/ops/webhooks/{sid}\?redelivered={delivery}$"))
    assert await pool.fetchval("SELECT status FROM ecommerce.webhook_deliveries WHERE id = $1", delivery) != "dead"
    await assert_accessible(page)

    await sign_in(phone, base, "olga", PASSWORD)
    await phone.goto(f"{base}/ops/movements?sku=TEE-M")
    await expect(phone.locator("#journal tbody tr").first).to_contain_text("olga")
    await assert_accessible(phone)
    # The page fits the phone: nothing wider than the screen outside its scrolling table wrappers.
    assert await phone.evaluate("() => document.documentElement.scrollWidth") <= 390


async def _receive(stack: Stack, sku: str, location_id: str, qty: int, key: str) -> None:
    headers = {"Authorization": f"Bearer {stack.admin_key}", "Idempotency-Key": key}
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url('inventory')}/v1/stock/movements", json={
            "sku": sku, "location_id": location_id, "kind": "receipt", "qty": qty}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()


async def _on_hand(stack: Stack, sku: str, location_id: str) -> int:
    levels = await stack.admin("GET", "inventory", f"/v1/stock?location_id={location_id}&sku_prefix={sku}")
    return next(int(r["on_hand"]) for r in levels["items"] if r["sku"] == sku)
