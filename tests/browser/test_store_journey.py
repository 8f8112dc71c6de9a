"""A store associate on a 390 px phone: finds a SKU by name, sees a nearby store's stock change live
(and hears it announced), reserves it there for pick-up in two taps; every page passes axe-core."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.conftest import PASSWORD, Stack, UserFactory
from tests.browser.harness import assert_accessible, screenshot, sign_in

CAMDEN = {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True}


async def test_look_up_see_a_nearby_store_change_live_and_reserve_for_pick_up(
        phone: Page, console_stack: Stack, console_user: UserFactory) -> None:
    base = console_stack.url("console")
    await console_user("sam", role="store", location_id="store-0001")
    await console_stack.admin("PUT", "inventory", "/v1/locations/store-0002", json=CAMDEN)
    await console_stack.admin("PUT", "inventory", "/v1/skus/JEANS-32", json={"name": "Jeans 32", "price": "79.00",
                                                                            "currency": "EUR"})
    for location_id, qty, key in (("store-0001", 1, "j1"), ("store-0002", 4, "j2")):
        await _receive(console_stack, "JEANS-32", location_id, qty, key)
    await sign_in(phone, base, "sam", PASSWORD)
    assert phone.url == f"{base}/store"
    await assert_accessible(phone)

    await phone.fill("input[name=q]", "jeans")  # htmx swaps the results in as the name is typed
    result = phone.get_by_role("link", name=re.compile("JEANS-32"))
    await expect(result).to_be_visible()
    await result.click()
    await phone.wait_for_url(f"{base}/store/sku/JEANS-32")
    camden = phone.locator("#nearby-store-0002")
    await expect(camden.locator("td").nth(1)).to_have_text("4")
    await assert_accessible(phone)
    # The page fits the phone: nothing wider than the screen outside its scrolling table wrappers.
    assert await phone.evaluate("() => document.documentElement.scrollWidth") <= 390

    await phone.wait_for_timeout(500)  # the relay's stream is open (htmx connects on load)
    await _receive(console_stack, "JEANS-32", "store-0002", 3, "j3")
    await expect(phone.locator("#nearby-store-0002 td").nth(1)).to_have_text("7", timeout=10_000)
    await expect(phone.locator("[sse-swap=announce]")).to_have_text("Stock at Camden changed to 7 available.")
    await screenshot(phone, "store-sku")

    await phone.get_by_role("button", name="Reserve for pick-up at Camden").click()  # tap one
    await expect(phone.get_by_role("heading", name="Reserve for pick-up at Camden")).to_be_visible()
    await assert_accessible(phone)
    await phone.fill("input[name=qty]", "2")
    await phone.get_by_role("button", name="Confirm").click()  # tap two
    await phone.wait_for_url(re.compile(r"/store/orders/[0-9a-f-]{36}$"))
    await expect(phone.locator("#order-status")).to_have_text("placed")
    await assert_accessible(phone)
    order_id = (await phone.locator("#order-id").inner_text()).strip()
    order = await console_stack.admin("GET", "orders", f"/v1/orders/{order_id}")
    assert order["fulfillment"] == {"type": "pickup", "location_id": "store-0002", "ship_to": None}
    assert order["history"][0]["actor"].endswith(":sam")  # the order names who placed it

    await phone.goto(f"{base}/store/pickups")
    await assert_accessible(phone)
    await screenshot(phone, "store-pickups")


async def _receive(stack: Stack, sku: str, location_id: str, qty: int, key: str) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {stack.admin_key}", "Idempotency-Key": key}
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url('inventory')}/v1/stock/movements", json={
            "sku": sku, "location_id": location_id, "kind": "receipt", "qty": qty}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
