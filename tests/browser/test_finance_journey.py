"""Finance in a real browser through the whole stack: upload a settlement file (the page's script sends
it with progress), run the day, filter the workbench to the exceptions, resolve one with a reason,
commit to the ledger, read the revenue chart; every page passes axe-core."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from playwright.async_api import Page, expect

from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, screenshot, sign_in

WAREHOUSE = {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True,
             "pickup": False, "timezone": "Europe/London"}
LONDON = {"lat": 51.5072, "lon": -0.1276}


async def shot(page: Page, name: str) -> None:
    await screenshot(page, f"finance-{name}")


async def _admin(stack: Stack, method: str, name: str, path: str, key: str, json: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {stack.admin_key}", "Idempotency-Key": key}
    async with aiohttp.ClientSession() as http, http.request(method, f"{stack.url(name)}{path}", json=json,
                                                             headers=headers) as resp:
        body = await resp.json(content_type=None)
        assert resp.status < 300, (path, resp.status, body)
        return body


async def _sell(stack: Stack, sku: str, price: str, key: str) -> dict[str, Any]:
    order = await _admin(stack, "POST", "orders", "/v1/orders", key, {
        "channel": "online", "currency": "EUR", "lines": [{"sku": sku, "qty": 1, "unit_price": price}],
        "fulfillment": {"type": "ship", "location_id": "wh-1", "ship_to": LONDON}})
    return await _admin(stack, "POST", "orders", f"/v1/orders/{order['id']}/fulfill", key + "f")


async def test_import_run_resolve_and_commit(page: Page, console_stack: Stack, console_user: UserFactory,
                                            pool: asyncpg.Pool, tmp_path: Path) -> None:
    base = console_stack.url("console")
    await console_stack.admin("PUT", "inventory", "/v1/locations/wh-1", json=WAREHOUSE)
    for sku, price in (("TEE", "19.90"), ("JEANS", "79.00")):
        await console_stack.admin("PUT", "inventory", f"/v1/skus/{sku}", json={"name": sku, "price": price,
                                                                              "currency": "EUR"})
        await _admin(console_stack, "POST", "inventory", "/v1/stock/movements", f"r-{sku}",
                     {"sku": sku, "location_id": "wh-1", "kind": "receipt", "qty": 10})
    tee, jeans = await _sell(console_stack, "TEE", "19.90", "o1"), await _sell(console_stack, "JEANS", "79.00", "o2")
    day = (await pool.fetchval("SELECT (now() AT TIME ZONE 'Europe/London')::date")).isoformat()
    payouts = tmp_path / "payouts.csv"
    payouts.write_text("provider,external_id,order_id,amount,fee,currency,settled_at,type\n"
                       f"stripe,p1,{tee['id']},19.90,0.30,EUR,{day}T12:00:00Z,capture\n"
                       f"stripe,p2,{jeans['id']},78.00,0.90,EUR,{day}T12:00:00Z,capture\n")
    await console_user("fay", role="finance", display_name="Fay Finance")
    await sign_in(page, base, "fay", PASSWORD)
    assert page.url == f"{base}/finance"
    await assert_accessible(page)

    await page.set_input_files("#f-file", str(payouts))
    await page.get_by_role("button", name="Upload and import").click()
    await expect(page.locator("#import-result .import-summary")).to_contain_text("New settlements")
    await expect(page.locator("#import-result dd").nth(1)).to_have_text("2")
    assert await page.locator("#upload-progress").evaluate("p => p.value") == 100
    assert page.url == f"{base}/finance"  # sent by the script, no page load
    await assert_accessible(page)
    await shot(page, "upload")

    await page.goto(f"{base}/finance/runs")
    await page.fill("#f-business_day", day)
    await page.select_option("#f-channel", "online")
    await page.get_by_role("button", name="Run reconciliation").click()
    await page.wait_for_url(re.compile(r"/finance/runs/\d+$"))
    run_url = page.url
    await expect(page.locator("#run-status")).to_have_text("open")
    await assert_accessible(page)

    await page.get_by_role("link", name=re.compile(r"^amount mismatch \(1\)")).click()  # htmx: the items only
    await expect(page.locator("#items-heading")).to_have_text("Items: amount mismatch")
    await expect(page.locator("#items tbody tr")).to_have_count(1)
    await expect(page.locator("#items tbody")).to_contain_text("stripe p2: 78.00 EUR")
    await shot(page, "workbench")
    await page.get_by_role("link", name=re.compile(r"^Resolve item")).click()
    await assert_accessible(page)
    await page.get_by_role("button", name=re.compile(r"^Resolve item")).click()  # no reason: refused in place
    await expect(page.locator("#f-reason-error")).to_be_visible()
    await shot(page, "resolve")
    await page.fill("#f-reason", "provider kept a 1.00 fee")
    await page.get_by_role("button", name=re.compile(r"^Resolve item")).click()
    await page.wait_for_url(run_url)
    await expect(page.locator("#run-status")).to_have_text("reconciled")
    await expect(page.locator("#items")).to_contain_text("provider kept a 1.00 fee (fay (finance))")

    await page.get_by_role("button", name=re.compile(r"^Commit run")).click()
    await expect(page.locator("#run-status")).to_have_text("committed")
    await assert_accessible(page)

    await page.goto(f"{base}/finance/revenue?from={day}&to={day}")
    await expect(page.locator("svg[role=img] rect")).to_have_count(1)
    await expect(page.locator("#report tbody")).to_contain_text("98.90")
    await assert_accessible(page)
    await shot(page, "revenue")

    await page.set_viewport_size({"width": 390, "height": 844})  # a phone: wide tables scroll in their box
    for path in ("/finance", "/finance/runs", run_url.removeprefix(base), f"/finance/revenue?from={day}&to={day}"):
        await page.goto(base + path)
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390, path
