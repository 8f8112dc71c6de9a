"""Operations in the browser: a transfer made by a signed-in person, then the journal answers "who
changed this stock?" with that person's name; the stock table filters without a reload."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, screenshot, sign_in


async def test_a_transfer_then_the_journal_names_who_made_it(page: Page, console_stack: Stack,
                                                             console_user: UserFactory) -> None:
    base = console_stack.url("console")
    for location in ("store-0001", "wh-1"):
        await console_stack.admin("PUT", "inventory", f"/v1/locations/{location}", json={
            "name": location.title(), "kind": "store" if location.startswith("store") else "warehouse",
            "lat": 51.5, "lon": -0.1, "ship": True, "pickup": True})
    await console_stack.admin("PUT", "inventory", "/v1/skus/TEE-M", json={"name": "Tee M", "price": "19.90",
                                                                           "currency": "EUR"})
    await console_user("olga", role="ops", display_name="Olga Ops")
    await sign_in(page, base, "olga", PASSWORD)
    assert page.url == f"{base}/ops"

    await page.goto(f"{base}/ops/transfers")
    await assert_accessible(page)
    await page.fill("input[name=sku]", "TEE-M")
    await page.select_option("select[name=location_id]", "wh-1")
    await page.select_option("select[name=to_location_id]", "wh-1")
    await page.fill("input[name=qty]", "3")
    await page.get_by_role("button", name="Transfer").click()
    await expect(page.locator("#f-to_location_id-error")).to_have_text("a transfer goes to another location")
    await assert_accessible(page)  # the refused form, errors and all

    # Stock first (a receipt through the API), then the transfer the person makes.
    await console_stack.admin("POST", "inventory", "/v1/stock/movements", json={
        "sku": "TEE-M", "location_id": "wh-1", "kind": "receipt", "qty": 20}, idempotency_key="seed-tee")
    await page.select_option("select[name=to_location_id]", "store-0001")
    await page.fill("input[name=reason]", "window display")
    await page.get_by_role("button", name="Transfer").click()
    await page.wait_for_url(f"{base}/ops/transfers?done=1")

    await page.goto(f"{base}/ops/movements")
    row = page.locator("tbody tr").filter(has_text="window display").first
    await expect(row).to_contain_text("olga (ops)")
    await assert_accessible(page)
    await screenshot(page, "ops-journal")

    await page.goto(f"{base}/ops")
    await page.select_option("select[name=location_id]", "store-0001")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#levels tbody tr")).to_have_count(1)
    await expect(page.locator("#levels tbody tr td").nth(2)).to_have_text("3")
    assert "location_id=store-0001" in page.url  # htmx pushed the filter into the address
    await assert_accessible(page)
    await screenshot(page, "ops-stock")
