"""Signing in and out: every refusal first (wrong password, no CSRF token, another site's form, a
disabled user, too many guesses, an open redirect), then what a good sign-in gives: a session cookie
and a short-lived API key of that person's own, which the services name in what they record."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from services.console.users import create_user
from shared.auth import hash_key, new_key
from shared.errors import ValidationFailed
from tests.conftest import ServiceFactory
from tests.services.console.conftest import PASSWORD, csrf_of, sign_in

pytestmark = pytest.mark.asyncio


async def sessions(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM console.sessions"))


async def person_keys(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE person IS NOT NULL"))


async def test_sign_in_page_is_open_and_sends_security_headers(service: ServiceFactory) -> None:
    console = await service("console")
    resp = await console.client.get("/sign-in")
    assert resp.status == 200
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"
    cookie = resp.cookies["omnistock_sign_in"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"


async def test_signed_out_visitor_is_sent_to_sign_in(service: ServiceFactory) -> None:
    console = await service("console")
    for path in ("/", "/store", "/finance", "/audit", "/ops", "/no-such-page"):
        resp = await console.client.get(path, allow_redirects=False)
        assert resp.status == 303, path
        assert resp.headers["Location"].startswith("/sign-in?next=")


async def test_wrong_password_and_unknown_user_read_the_same(service: ServiceFactory, make_user, pool) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    wrong = await sign_in(console.client, "olga", "not the password at all")
    unknown = await sign_in(console.client, "nobody", PASSWORD)
    for resp in (wrong, unknown):
        assert resp.status == 401
        assert "Wrong user name or password" in await resp.text()
        assert "omnistock_session" not in resp.cookies
    assert await sessions(pool) == 0 and await person_keys(pool) == 0


async def test_form_without_its_token_or_from_another_site_is_refused(service: ServiceFactory, make_user,
                                                                      pool) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    await console.client.get("/sign-in")
    no_token = await console.client.post("/sign-in", data={"username": "olga", "password": PASSWORD},
                                         allow_redirects=False)
    assert no_token.status == 403
    page = await console.client.get("/sign-in")
    token = csrf_of(await page.text())
    forged = await console.client.post("/sign-in", data={"username": "olga", "password": PASSWORD, "csrf_token": token},
                                       headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert forged.status == 403
    assert await sessions(pool) == 0


async def test_disabled_user_cannot_sign_in(service: ServiceFactory, make_user, pool) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    await pool.execute("UPDATE console.users SET disabled_at = now() WHERE username = 'olga'")
    resp = await sign_in(console.client, "olga")
    assert resp.status == 401
    assert await sessions(pool) == 0


async def test_guessing_is_cut_off(service: ServiceFactory, make_user, pool) -> None:
    console = await service("console", console_sign_in_attempts=3)
    await make_user("olga", "ops")
    for _ in range(3):
        assert (await sign_in(console.client, "olga", "guess guess guess")).status == 401
    right = await sign_in(console.client, "olga")  # even the right password, until the window passes
    assert right.status == 429
    assert await sessions(pool) == 0


async def test_next_never_leaves_the_site(service: ServiceFactory, make_user) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    for target in ("//evil.example/x", "https://evil.example", "/\\evil.example"):
        resp = await sign_in(console.client, "olga", next=target)
        assert resp.status == 303
        assert resp.headers["Location"] == "/ops", target
        console.client.session.cookie_jar.clear()


async def test_sign_in_gives_a_short_lived_key_of_the_person(service: ServiceFactory, make_user, pool,
                                                             settings) -> None:
    console = await service("console")
    inventory = await service("inventory")
    await make_user("sam", "store", location_id="store-9")
    resp = await sign_in(console.client, "sam")
    assert resp.status == 303 and resp.headers["Location"] == "/store"
    cookie = resp.cookies["omnistock_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    key = await pool.fetchrow("SELECT role, location_id, person, expires_at - created_at AS life FROM core.api_keys"
                              " WHERE person IS NOT NULL")
    assert (key["role"], key["location_id"], key["person"]) == ("store", "store-9", "sam")
    assert key["life"] <= timedelta(seconds=settings.console_session_max_s + 5)
    # The sealed key is not readable from the table: only the cookie's holder can open it.
    row = await pool.fetchrow("SELECT sealed_key, token_hash FROM console.sessions")
    assert b"osk_" not in row["sealed_key"]
    assert row["token_hash"] != cookie.value.encode()
    del inventory


async def test_sign_out_ends_the_session_and_revokes_the_key(service: ServiceFactory, make_user, pool) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    await sign_in(console.client, "olga")
    page = await console.client.get("/no-such-page", allow_redirects=False)
    assert page.status == 404  # signed in: a real 404, with the sign-out form
    token = csrf_of(await page.text())
    out = await console.client.post("/sign-out", data={"csrf_token": token}, allow_redirects=False)
    assert out.status == 303
    assert await pool.fetchval("SELECT end_reason FROM console.sessions") == "signed-out"
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM core.api_keys WHERE person = 'olga'")


async def test_idle_session_ends_on_the_next_request(service: ServiceFactory, make_user, pool, settings) -> None:
    console = await service("console")
    await make_user("olga", "ops")
    await sign_in(console.client, "olga")
    await pool.execute("UPDATE console.sessions SET last_seen_at = now() - make_interval(secs => $1)",
                       settings.console_session_idle_s + 1)
    resp = await console.client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/sign-in")
    assert await pool.fetchval("SELECT end_reason FROM console.sessions") == "idle"
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM core.api_keys WHERE person = 'olga'")


async def test_weak_passwords_and_store_users_without_a_store_are_refused(pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValidationFailed) as short:
            await create_user(conn, username="ann", display_name="Ann", role="ops", password="short")
        assert short.value.extra["errors"][0]["field"] == "password"
        with pytest.raises(ValidationFailed) as nowhere:
            await create_user(conn, username="ann", display_name="Ann", role="store", password=PASSWORD)
        assert nowhere.value.extra["errors"][0]["field"] == "location_id"
    assert await pool.fetchval("SELECT count(*) FROM console.users") == 0


async def test_console_role_cannot_make_users_or_mint_keys(service_urls, make_user) -> None:
    await make_user("olga", "ops")
    conn = await asyncpg.connect(service_urls["console"])
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO console.users (username, display_name, role, password_hash)"
                               " VALUES ('mallory', 'M', 'admin', '$argon2id$x')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE console.users SET role = 'admin'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO core.api_keys (key_hash, role) VALUES ('\\x00', 'admin')")
    finally:
        await conn.close()


async def test_what_a_person_key_changes_names_the_person(service: ServiceFactory, make_user, pool) -> None:
    inventory = await service("inventory")
    await make_user("sam", "store", location_id="store-9")
    key = new_key()
    key_id = await pool.fetchval("SELECT console.issue_person_key(id, $1, now() + interval '1 hour')"
                                 " FROM console.users WHERE username = 'sam'", hash_key(key))
    await pool.execute("INSERT INTO inventory.skus (sku, name, price, currency) VALUES ('SKU-P1', 'Pen', 2, 'EUR')")
    status, body, _ = await inventory.as_key(key).post(
        "/v1/stock/movements", idem="who-1",
        json={"sku": "SKU-P1", "location_id": "store-9", "kind": "receipt", "qty": 3, "reason": "delivery"})
    assert status == 201, body
    actor = await pool.fetchval("SELECT actor FROM inventory.stock_movements WHERE sku = 'SKU-P1'")
    assert actor == f"store:{key_id}:sam"


async def test_a_person_key_cannot_be_issued_for_a_disabled_user_or_outlive_a_day(make_user, pool) -> None:
    await make_user("olga", "ops")
    key_id = await pool.fetchval("SELECT console.issue_person_key(id, '\\x02', now() + interval '30 days')"
                                 " FROM console.users WHERE username = 'olga'")
    expires = await pool.fetchval("SELECT expires_at - now() FROM core.api_keys WHERE id = $1", key_id)
    assert expires <= timedelta(days=1)
    await pool.execute("UPDATE console.users SET disabled_at = now()")
    with pytest.raises(asyncpg.PostgresError, match="no enabled user"):
        await pool.fetchval("SELECT console.issue_person_key(id, '\\x03', now() + interval '1 hour')"
                            " FROM console.users WHERE username = 'olga'")
