"""Finance pages through the real console, finance, orders and inventory: refusals first (a store
associate, a resolution without a reason or with a bad amount, a malformed settlement file), then a
day's work: import a file, run the day, resolve an item, commit, and the revenue report and its CSV."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.services.console.conftest import csrf_of, sign_in
from tests.services.finance.conftest import LOCATIONS, SKUS, Books

pytestmark = pytest.mark.asyncio


async def settlements(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM finance.settlements"))


async def setup(console_with: Any, make_key: Any, pool: asyncpg.Pool, **console: Any) -> tuple[TestClient, Books]:
    apps = await console_with("inventory", "orders", "finance", **console)
    inv = apps["inventory"]
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await inv.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, price in SKUS.items():
        status, resp, _ = await inv.put(f"/v1/skus/{sku}", json={"name": sku, "price": price, "currency": "EUR"})
        assert status == 201, resp
    books = Books(inv, apps["orders"], apps["finance"].as_key(await make_key("finance")), pool)
    await books.stock("wh-1")
    return apps["console"].client, books


async def signed_in(client: TestClient, make_user: Any, name: str = "fay", role: str = "finance",
                    location_id: str | None = None) -> str:
    await make_user(name, role, location_id=location_id)
    resp = await sign_in(client, name)
    assert resp.status == 303
    page = await client.get("/finance/runs" if role == "finance" else "/no-such-page")
    return csrf_of(await page.text())


def csv_file(*rows: tuple[str, str, str]) -> bytes:
    lines = ["provider,external_id,order_id,amount,fee,currency,settled_at,type"]
    lines += [f"stripe,{ext},{order},{amount},0.00,EUR,2026-12-02T10:00:00Z,capture" for ext, order, amount in rows]
    return ("\n".join(lines) + "\n").encode()


def multipart(token: str, body: bytes, filename: str = "payouts.csv") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf_token", token)
    form.add_field("file", body, filename=filename, content_type="text/csv")
    return form


def field_error(html: str, name: str) -> str:
    """The error shown beside the field `name` (and tied to it by aria-describedby)."""
    assert f'aria-describedby="f-{name}-error"' in html, html
    found = re.search(rf'id="f-{name}-error" class="field-error">([^<]+)<', html)
    assert found, html
    return found.group(1)


async def test_a_store_associate_cannot_open_or_post_finance_pages(console_with, make_user, make_key, pool) -> None:
    client, _ = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user, "sam", "store", location_id="store-a")
    for path in ("/finance", "/finance/runs", "/finance/runs/1", "/finance/revenue",
                 "/finance/revenue.csv?from=2026-12-01&to=2026-12-02"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 403, path
        assert "Not for this account" in await resp.text()
    resp = await client.post("/finance/settlements", data=csv_file(("x1", "o", "1.00")),
                             headers={"Content-Type": "text/csv", "X-CSRF-Token": token})
    assert resp.status == 403
    resp = await client.post("/finance/runs", data={"csrf_token": token, "business_day": "2026-12-02"})
    assert resp.status == 403
    assert await settlements(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM finance.runs") == 0


async def test_an_upload_without_the_token_is_refused_and_imports_nothing(console_with, make_user, make_key,
                                                                           pool) -> None:
    client, books = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    order = await books.sell_online({"TEE": 1})
    body = csv_file(("a1", order["id"], "19.90"))
    raw = await client.post("/finance/settlements", data=body, headers={"Content-Type": "text/csv"})
    assert raw.status == 403
    form = aiohttp.FormData()  # the file before the token: refused before the file is read
    form.add_field("file", body, filename="p.csv", content_type="text/csv")
    form.add_field("csrf_token", token)
    assert (await client.post("/finance/settlements", data=form)).status == 403
    wrong = await client.post("/finance/settlements", data=multipart("not-the-token", body))
    assert wrong.status == 403
    assert await settlements(pool) == 0


async def test_a_malformed_file_shows_the_apis_line_errors_and_imports_nothing(console_with, make_user,
                                                                              make_key, pool) -> None:
    client, books = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    order = await books.sell_online({"TEE": 1})
    bad = csv_file(("a1", order["id"], "19.90"), ("a2", order["id"], "12.345"), ("a3", order["id"], "lots"))
    # as the page's script sends it (the raw file, its fragment back), and as a plain form
    raw = await client.post("/finance/settlements", data=bad, headers={
        "Content-Type": "text/csv", "X-CSRF-Token": token, "HX-Request": "true"})
    assert raw.status == 422
    html = await raw.text()
    assert "<html" not in html  # the result fragment only
    lines = re.findall(r"<tr><td>(\d+)</td><td>([a-z_]+)</td>", html)
    assert lines == [("3", "amount"), ("4", "amount")], html
    scripted = aiohttp.FormData()  # a script's multipart post, its token in the header
    scripted.add_field("file", bad, filename="payouts.csv", content_type="text/csv")
    resp = await client.post("/finance/settlements", data=scripted, headers={"X-CSRF-Token": token})
    assert resp.status == 422 and "Rows refused" in await resp.text()
    plain = await client.post("/finance/settlements", data=multipart(token, bad))
    assert plain.status == 422
    assert "Rows refused (nothing was imported)" in await plain.text()
    wrong_kind = await client.post("/finance/settlements", data=multipart(token, bad, filename="payouts.xlsx"))
    assert wrong_kind.status == 415
    assert "must end in .csv" in await wrong_kind.text()
    assert await settlements(pool) == 0


async def test_a_resolution_needs_a_reason_and_a_good_amount_and_changes_nothing_without(
        console_with, make_user, make_key, pool) -> None:
    client, books = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    order = await books.sell_online({"TEE": 1})
    run = await books.run(await books.day_of("wh-1"))
    item_no = run["items"][0]["item_no"]
    path = f"/finance/runs/{run['id']}/items/{item_no}/resolution"
    no_reason = await client.post(path, data={"csrf_token": token, "action": "write_off", "reason": "  "},
                                  headers={"HX-Request": "true"})
    assert no_reason.status == 422
    html = await no_reason.text()
    assert html.lstrip().startswith('<form id="resolve-form"')  # the form alone, swapped in place
    assert field_error(html, "reason") == "required: fill this in"
    bad_amount = await client.post(path, data={"csrf_token": token, "action": "adjustment", "reason": "fee",
                                               "amount": "12.345"})
    assert bad_amount.status == 422
    assert "2 decimal places" in field_error(await bad_amount.text(), "amount")
    # the API's own rule (an adjustment needs an amount) comes back as its refusal, shown on the form
    no_amount = await client.post(path, data={"csrf_token": token, "action": "adjustment", "reason": "fee"})
    assert no_amount.status == 422
    assert "amount is required" in await no_amount.text()
    _, item, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}/items?after={item_no - 1}&limit=1")
    assert item["items"][0]["resolution"] is None and item["items"][0]["order_id"] == order["id"]
    commit = await client.post(f"/finance/runs/{run['id']}/commit", data={"csrf_token": token},
                               headers={"HX-Request": "true"})
    assert commit.status == 409  # unresolved and no override: the error sits beside the override field
    assert field_error(await commit.text(), "override_reason")
    _, again, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}")
    assert again["status"] == "open"


async def test_import_run_resolve_commit_and_the_revenue_report(console_with, make_user, make_key, pool) -> None:
    client, books = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    paid = await books.sell_online({"TEE": 1})
    short = await books.sell_online({"JEANS": 1})
    file = csv_file(("p1", paid["id"], "19.90"), ("p2", short["id"], "78.00"))
    resp = await client.post("/finance/settlements", data=multipart(token, file))
    assert resp.status == 200
    html = await resp.text()
    assert "<dt>New settlements</dt><dd>2</dd>" in html
    again = await client.post("/finance/settlements", data=file, headers={
        "Content-Type": "text/csv", "X-CSRF-Token": token, "HX-Request": "true"})
    assert "<dt>Imported before (skipped)</dt><dd>2</dd>" in await again.text()
    assert await settlements(pool) == 2

    day = (await books.day_of("wh-1")).isoformat()
    bad_day = await client.post("/finance/runs", data={"csrf_token": token, "business_day": "yesterday"})
    assert bad_day.status == 422 and field_error(await bad_day.text(), "business_day")
    resp = await client.post("/finance/runs", data={"csrf_token": token, "business_day": day, "channel": "online"},
                             allow_redirects=False)
    assert resp.status == 303
    run_path = resp.headers["Location"]
    run_id = int(run_path.rsplit("/", 1)[1])
    page = await client.get(run_path)
    html = await page.text()
    assert page.status == 200 and "stripe p2: 78.00 EUR" in html and "stripe p1: 19.90 EUR" in html
    listed = await client.get(run_path + "?class=amount_mismatch", headers={"HX-Request": "true"})
    fragment = await listed.text()
    assert fragment.lstrip().startswith('<section id="items"') and "p2" in fragment and "p1" not in fragment
    _, run, _ = await books.finance.get(f"/v1/reconciliations/{run_id}")
    mismatch = next(i for i in run["items"] if i["class"] == "amount_mismatch")
    item_page = await client.get(f"{run_path}/items/{mismatch['item_no']}")
    assert "78.00 EUR" in await item_page.text()

    resp = await client.post(f"{run_path}/items/{mismatch['item_no']}/resolution", allow_redirects=False, data={
        "csrf_token": token, "idem": "resolve-1", "action": "write_off", "reason": "provider fee, goodwill"})
    assert resp.status == 303 and resp.headers["Location"] == run_path
    resp = await client.post(f"{run_path}/commit", data={"csrf_token": token}, allow_redirects=False)
    assert resp.status == 303
    _, run, _ = await books.finance.get(f"/v1/reconciliations/{run_id}")
    assert run["status"] == "committed" and run["committed_by"].endswith(":fay")
    resolved = next(i for i in run["items"] if i["item_no"] == mismatch["item_no"])["resolution"]
    assert resolved["reason"] == "provider fee, goodwill" and resolved["resolved_by"].endswith(":fay")
    assert "committed" in await (await client.get(run_path)).text()

    bad_range = await client.get(f"/finance/revenue?from={day}&to=2000-01-01")
    assert bad_range.status == 422 and field_error(await bad_range.text(), "to")
    report = await client.get(f"/finance/revenue?from={day}&to={day}&group_by=day")
    html = await report.text()
    assert report.status == 200 and "<svg" in html and "style=" not in html
    _, api_report, _ = await books.finance.get(f"/v1/reports/revenue?from={day}&to={day}&group_by=day")
    row = api_report["rows"][0]
    assert (row["orders"], row["revenue"]) == (2, "98.90")
    assert f"<td>{row['average_order_value']}</td>" in html
    csv = await client.get(f"/finance/revenue.csv?from={day}&to={day}&group_by=day")
    assert csv.status == 200 and csv.content_type == "text/csv"
    assert csv.headers["Content-Disposition"] == f'attachment; filename="revenue-day-{day}-{day}.csv"'
    status, api_csv, _ = await books.finance.get(f"/v1/reports/revenue.csv?from={day}&to={day}&group_by=day")
    assert status == 200
    text = await csv.text()
    assert text == api_csv and "98.90" in text


async def test_a_closeout_is_declared_and_a_bad_amount_changes_nothing(console_with, make_user, make_key,
                                                                       pool) -> None:
    client, _ = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    day = date.today().isoformat()
    bad = await client.post("/finance/closeouts", data={"csrf_token": token, "location_id": "store-a",
                                                        "business_day": day, "currency": "EUR", "cash": "ten"})
    assert bad.status == 422 and field_error(await bad.text(), "cash")
    assert await pool.fetchval("SELECT count(*) FROM finance.closeouts") == 0
    ok = await client.post("/finance/closeouts", data={"csrf_token": token, "location_id": "store-a",
                                                       "business_day": day, "currency": "EUR", "cash": "120.50",
                                                       "card": "300.00"})
    assert ok.status == 200
    assert "Close-out of store-a" in await ok.text()
    assert await pool.fetchval("SELECT count(*) FROM finance.closeouts") == 1



async def test_a_file_larger_than_any_form_body_streams_through(console_with, make_user, make_key,
                                                              pool) -> None:
    """Over the console's own body limit (OMNISTOCK_MAX_BODY_BYTES, 64 KiB here), so it can only arrive if
    the console passes it on as it comes instead of reading it whole, by either way of sending."""
    limit = 64 * 1024
    client, _ = await setup(console_with, make_key, pool, max_body_bytes=limit)
    token = await signed_in(client, make_user)
    rows = 3000
    body = csv_file(*((f"big{n:07d}", f"shopify:{n}", "10.00") for n in range(rows)))
    assert len(body) > 3 * limit
    resp = await client.post("/finance/settlements", data=body, headers={
        "Content-Type": "text/csv", "X-CSRF-Token": token, "HX-Request": "true"})
    assert resp.status == 200, await resp.text()
    assert f"<dt>New settlements</dt><dd>{rows}</dd>" in await resp.text()
    again = await client.post("/finance/settlements", data=multipart(token, body))
    assert f"<dt>Imported before (skipped)</dt><dd>{rows}</dd>" in await again.text()
    assert await settlements(pool) == rows


async def test_an_unpaid_sale_is_linked_to_a_later_settlement(console_with, make_user, make_key, pool) -> None:
    client, books = await setup(console_with, make_key, pool)
    token = await signed_in(client, make_user)
    order = await books.sell_online({"CAP": 1})
    run = await books.run(await books.day_of("wh-1"))
    (item,) = [i for i in run["items"] if i["class"] == "missing_payment"]
    later = await books.settle({"provider": "stripe", "external_id": "late-1", "order_id": order["id"],
                                "amount": "9.50", "currency": "EUR", "settled_at": "2026-12-03T09:00:00Z"})
    _, listed, _ = await books.finance.get(f"/v1/settlements?order_id={order['id']}")
    settlement_id = listed["items"][0]["id"]
    path = f"/finance/runs/{run['id']}/items/{item['item_no']}/resolution"
    bad = await client.post(path, data={"csrf_token": token, "action": "linked_settlement", "reason": "paid late",
                                        "settlement_id": "the late one"})
    assert bad.status == 422 and field_error(await bad.text(), "settlement_id")
    page = await client.get(f"/finance/runs/{run['id']}/items/{item['item_no']}")
    assert "late-1" in await page.text()  # the payment that came later is listed beside the sale
    resp = await client.post(path, allow_redirects=False, data={
        "csrf_token": token, "action": "linked_settlement", "reason": "paid late", "settlement_id": settlement_id})
    assert resp.status == 303, await resp.text()
    _, after, _ = await books.finance.get(f"/v1/reconciliations/{run['id']}")
    resolution = next(i for i in after["items"] if i["item_no"] == item["item_no"])["resolution"]
    assert (resolution["action"], resolution["settlement_id"]) == ("linked_settlement", settlement_id)
    assert later["inserted"] == 1


async def test_an_admin_sees_the_finance_apis_refusal_and_changes_nothing(console_with, make_user, make_key,
                                                                          pool) -> None:
    """Admin may open the area (AREAS), but the finance API refuses an operator: the page says so."""
    client, _ = await setup(console_with, make_key, pool)
    await make_user("ada", "admin")
    assert (await sign_in(client, "ada")).status == 303
    page = await client.get("/finance/runs")
    html = await page.text()
    assert page.status == 200 and 'role="alert"' in html
    resp = await client.post("/finance/runs", data={"csrf_token": csrf_of(html), "business_day": "2026-12-02"})
    assert resp.status == 403 and 'role="alert"' in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM finance.runs") == 0
