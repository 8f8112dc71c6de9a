"""The API reference: each service's document, and try-it-out that carries only the developer's key."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY
from tests.services.console.conftest import csrf_of, sign_in

pytestmark = pytest.mark.asyncio


async def test_reference_needs_a_sign_in_and_serves_each_document(console_with, make_user) -> None:
    apps = await console_with("inventory")
    client = apps["console"].client
    assert (await client.get("/reference", allow_redirects=False)).status == 303
    await make_user("dev", "ops")
    await sign_in(client, "dev")
    page = await client.get("/reference/inventory")
    assert page.status == 200 and "unsafe-inline" in page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    doc = await (await client.get("/reference/inventory/openapi.json")).json()
    assert doc["servers"] == [{"url": "/reference/inventory/api", "description": "inventory, through the console"}]
    assert any(path.startswith("/v1/stock") for path in doc["paths"])
    own = await (await client.get("/reference/console/openapi.json")).json()
    assert "/healthz" in own["paths"]
    assert (await client.get("/reference/nothing")).status == 404


async def test_try_it_out_sends_the_typed_key_never_the_session_one(console_with, make_user) -> None:
    apps = await console_with("inventory")
    client = apps["console"].client
    await make_user("dev", "ops")
    await sign_in(client, "dev")
    bare = await client.get("/reference/inventory/api/v1/locations")
    assert bare.status == 401  # the signed-in person's own key was not used
    typed = await client.get("/reference/inventory/api/v1/locations", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert typed.status == 200
    csrf = csrf_of(await (await client.get("/reference")).text())
    body = {"sku": "SKU-1", "location_id": "nowhere", "kind": "receipt", "qty": 1}
    forged = await client.post("/reference/inventory/api/v1/stock/movements", json=body,
                               headers={"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": "k1"})
    assert forged.status == 403  # no CSRF token: a page of another site cannot use this route
    sent = await client.post("/reference/inventory/api/v1/stock/movements", json=body,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": "k2",
                                      "X-CSRF-Token": csrf})
    assert sent.status in (404, 422) and sent.headers["Content-Type"].startswith("application/problem+json")
