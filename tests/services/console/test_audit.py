"""Audit pages: other roles refused, bad lookups answered plainly, entries found by seq, order id and
entry key, the checkpoint and proofs handed to the browser as data, exports passed on byte for byte."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ADMIN_KEY
from tests.ledger.conftest import sale, summary
from tests.ledger.test_ledger_service import cosign_as_finance, signed
from tests.services.console.conftest import sign_in

pytestmark = pytest.mark.asyncio
DATA = re.compile(r'<script type="application/json" id="ledger-data">(.*?)</script>', re.S)


async def ledger_with_entries(apps, settings, make_key) -> None:  # type: ignore[no-untyped-def]
    finance = apps["ledger"].as_key(await make_key("finance"))
    entries = [{**sale(1), "entry_key": "sale:o-1:2024-05-01"}, {**sale(2), "entry_key": "sale:o-2:2024-05-01"},
               {**summary(), "entry_key": "run:1"}]
    status, body, _ = await finance.post("/v1/ledger/entries", idem="a1", json=signed(entries, settings))
    assert status == 201, body


async def test_other_roles_cannot_open_audit_pages(console_with, make_user) -> None:
    apps = await console_with("ledger")
    client = apps["console"].client
    for name, role, location in (("sam", "store", "store-1"), ("fin", "finance", None)):
        await make_user(name, role, location_id=location)
        client.session.cookie_jar.clear()
        await sign_in(client, name)
        for path in ("/audit", "/audit/find", "/audit/entries/0", "/audit/verify", "/audit/export?from=0&to=1"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 403, (role, path)


async def test_lookups_refuse_garbage_and_find_by_seq_order_and_key(console_with, make_user, make_key,
                                                                    settings) -> None:
    apps = await console_with("ledger")
    await ledger_with_entries(apps, settings, make_key)
    client = apps["console"].client
    await make_user("ada", "auditor")
    await sign_in(client, "ada")
    garbage = await client.get("/audit/find", params={"q": "a b"})
    assert garbage.status == 422 and 'id="f-q-error"' in await garbage.text()
    missing = await client.get("/audit/entries/999")
    assert missing.status == 404 and "no entry" in (await missing.text()).lower()
    assert (await client.get("/audit/entries/12x")).status == 404
    by_seq = await client.get("/audit/find", params={"q": "1"}, allow_redirects=False)
    assert by_seq.status == 303 and by_seq.headers["Location"] == "/audit/entries/1"
    by_order = await (await client.get("/audit/find", params={"q": "o-2"})).text()
    assert 'href="/audit/entries/1"' in by_order
    by_key = await (await client.get("/audit/find", params={"q": "run:1"})).text()
    assert 'href="/audit/entries/2"' in by_key
    nothing = await (await client.get("/audit/find", params={"q": "o-77"})).text()
    assert "No entry has that order id" in nothing
    page = await (await client.get("/audit/entries/1")).text()
    data = json.loads(DATA.search(page).group(1))  # what the browser checks: the API's answer, unchanged
    assert data["seq"] == 1 and data["entry"]["order_id"] == "o-2" and len(data["leaf_hash"]) == 64
    assert "/static/verify.js" in page and 'id="verify-form"' in page


async def test_checkpoint_consistency_and_export(console_with, make_user, make_key, settings) -> None:
    apps = await console_with("ledger")
    await ledger_with_entries(apps, settings, make_key)
    admin_ledger = apps["ledger"].as_key(ADMIN_KEY)
    assert (await admin_ledger.get("/v1/ledger/checkpoint"))[0] == 200  # cut one
    client = apps["console"].client
    await make_user("ada", "auditor")
    await sign_in(client, "ada")
    checkpoint = await (await client.get("/audit")).text()
    assert "Tree size" in checkpoint and json.loads(DATA.search(checkpoint).group(1))["tree_size"] == 3
    bad = await client.get("/audit/consistency", params={"first": "x"})
    assert bad.status == 422 and 'id="f-first-error"' in await bad.text()
    beyond = await client.get("/audit/consistency", params={"first": "1", "second": "99"})
    assert 400 <= beyond.status < 500 and 'role="alert"' in await beyond.text()
    proof = await (await client.get("/audit/consistency", params={"first": "1", "second": "3"})).text()
    assert json.loads(DATA.search(proof).group(1))["second"] == 3
    assert (await client.get("/audit/export", params={"from": "0", "to": "z"})).status == 422
    early = await client.get("/audit/export", params={"from": "0", "to": "2"})
    assert early.status == 409 and 'role="alert"' in await early.text()  # not co-signed yet: said, not a broken file
    await cosign_as_finance(settings)
    export = await client.get("/audit/export", params={"from": "0", "to": "2"})
    assert export.status == 200 and export.headers["Content-Disposition"].startswith("attachment;")
    _, direct, _ = await apps["ledger"].as_key(await make_key("auditor")).get(
        "/v1/ledger/export", params={"from": "0", "to": "2"})
    assert json.loads(await export.read()) == direct  # the bundle passes through unchanged
