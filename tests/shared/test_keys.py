"""Key lifecycle over HTTP (`/v1/keys` on every service) and the cache that must follow it at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from shared.auth import create_api_key, hash_key
from shared.http.keys import KEY_CACHE
from tests.conftest import ADMIN_KEY, Api, ServiceFactory, assert_problem, role_url
from tests.polling import eventually

CACHED = {"auth_cache_ttl_s": 300.0}  # only a notification can explain a refusal within the test
STORE = {"name": "Soho", "kind": "store", "lat": 51.5, "lon": -0.13, "ship": True, "pickup": True,
         "timezone": "Europe/London"}


async def _refused_within(api: Api, path: str, seconds: float) -> dict[str, Any]:
    async def refused() -> dict[str, Any] | None:
        status, body, _ = await api.get(path)
        return body if status == 401 else None

    return await eventually(refused, within_s=seconds)


async def _create(api: Api, **body: Any) -> dict[str, Any]:
    status, created, _ = await api.post("/v1/keys", json=body)
    assert status == 201, created
    return created


async def test_a_key_revoked_on_one_service_is_refused_by_another_within_a_second(service: ServiceFactory) -> None:
    inventory, orders = await service("inventory", **CACHED), await service("orders", **CACHED)
    created = await _create(inventory, role="ops", label="lost tablet")
    tablet = orders.as_key(created["key"])
    assert (await tablet.get("/v1/orders"))[0] == 200  # cached by orders now, for up to 300 s
    assert (await tablet.get("/v1/orders"))[0] == 200
    status, revoked, _ = await inventory.post(f"/v1/keys/{created['id']}/revoke")
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked_at"], revoked
    body = await _refused_within(tablet, "/v1/orders", 1.0)
    assert body["detail"] == "API key revoked"
    assert (await inventory.as_key(created["key"]).get("/v1/locations"))[0] == 401


async def test_a_key_revoked_in_sql_while_its_cache_entry_is_warm_is_refused(
        service: ServiceFactory, pool: asyncpg.Pool) -> None:
    ledger = await service("ledger", **CACHED)
    async with pool.acquire() as conn:
        key = await create_api_key(conn, "auditor")
    auditor = ledger.as_key(key)
    assert (await auditor.get("/v1/ledger/identities"))[0] == 200
    await pool.execute("UPDATE core.api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(key))
    await _refused_within(auditor, "/v1/ledger/identities", 1.0)


async def test_a_revocation_while_the_listener_is_down_is_not_missed(service: ServiceFactory,
                                                                     pool: asyncpg.Pool) -> None:
    orders = await service("orders", **CACHED)
    cache = orders.client.app[KEY_CACHE]
    async with pool.acquire() as conn:
        key = await create_api_key(conn, "ops")
    ops = orders.as_key(key)
    assert (await ops.get("/v1/orders"))[0] == 200
    assert cache.is_cached(key)
    # The listening connection ends and the key is revoked in one transaction: its notification goes
    # to a connection that is gone. The cache must not trust what it held before it listens again.
    async with pool.acquire() as conn, conn.transaction():
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'omnistock-orders-keys'")
        await conn.execute("UPDATE core.api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(key))
    assert ended == 1
    await _refused_within(ops, "/v1/orders", 2.0)
    await eventually(lambda: asyncio.sleep(0, cache.trusted), within_s=10)  # listening again
    assert not cache.is_cached(key)


async def test_an_expired_key_is_refused_from_the_moment_it_expires(service: ServiceFactory,
                                                                    pool: asyncpg.Pool) -> None:
    # The key exists before the service listens: its creation's notification would otherwise bump the
    # cache's epoch while the first request looks it up, and that lookup would not be cached.
    expires_at = datetime.now(UTC) + timedelta(seconds=3)
    async with pool.acquire() as conn:
        key = await create_api_key(conn, "ops", expires_at=expires_at)
    inventory = await service("inventory", **CACHED)
    ops = inventory.as_key(key)
    assert (await ops.get("/v1/locations"))[0] == 200
    assert inventory.client.app[KEY_CACHE].is_cached(key)
    body = await _refused_within(ops, "/v1/locations", 10.0)
    assert datetime.now(UTC) >= expires_at
    assert body["detail"].startswith("API key expired at")
    status, page, _ = await inventory.get("/v1/keys", params={"status": "expired"})
    assert status == 200 and [item["status"] for item in page["items"]] == ["expired"], page


async def test_a_key_created_over_http_works_everywhere_with_its_role_and_expiry(service: ServiceFactory) -> None:
    finance, inventory = await service("finance"), await service("inventory")
    status, _, _ = await inventory.put("/v1/locations/store-a", json=STORE)
    assert status == 201
    before = datetime.now(UTC)
    created = await _create(finance, role="store", location_id="store-a", label="till 3", expires_in="30d")
    assert created["key"].startswith("osk_") and created["status"] == "active"
    assert created["role"] == "store" and created["location_id"] == "store-a" and created["label"] == "till 3"
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(days=30) <= expires - before <= timedelta(days=30, minutes=1)
    assert created["created_by"] is not None  # the bootstrap admin's id
    assert (await inventory.as_key(created["key"]).get("/v1/locations"))[0] == 200
    at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    timed = await _create(finance, role="auditor", expires_at=at.isoformat())
    assert datetime.fromisoformat(timed["expires_at"]) == at


@pytest.mark.parametrize(("body", "field"), [
    ({"role": "store"}, "location_id"),
    ({"role": "ops", "location_id": "store-a"}, "location_id"),
    ({"role": "store", "location_id": "nowhere"}, "location_id"),
    ({"role": "root"}, "role"),
    ({"role": "ops", "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
    ({"role": "ops", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),  # no offset: not a UTC time
    ({"role": "ops", "expires_in": "30 days"}, "expires_in"),
    ({"role": "ops", "expires_in": "0h"}, "expires_in"),
    ({"role": "ops", "expires_in": "999999w999999w"}, "expires_in"),
    ({"role": "store", "location_id": "store\x00a"}, "location_id"),
    ({"role": "ops", "expires_in": "1d", "expires_at": "2999-01-01T00:00:00Z"}, "body"),
    ({"role": "ops", "label": "till\x1b[2J"}, "label"),
    ({"role": "ops", "label": "x" * 201}, "label"),
    ({"role": "ops", "secret": "mine"}, "secret"),
])
async def test_a_bad_key_request_is_refused_and_creates_nothing(service: ServiceFactory, pool: asyncpg.Pool,
                                                                body: dict[str, Any], field: str) -> None:
    ledger = await service("ledger")  # its role cannot read inventory: the database checks the location
    before = await pool.fetchval("SELECT count(*) FROM core.api_keys")
    status, problem, _ = await ledger.post("/v1/keys", json=body)
    assert_problem(status, problem, 422, "validation-failed")
    assert field in [e["field"] for e in problem["errors"]] or field == "body", problem
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys") == before


async def test_only_admins_manage_keys(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    orders = await service("orders")
    async with pool.acquire() as conn:
        ops_key = await create_api_key(conn, "ops")
    ops = orders.as_key(ops_key)
    before = await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE revoked_at IS NULL")
    assert_problem(*(await ops.post("/v1/keys", json={"role": "admin"}))[:2], 403, "forbidden")
    assert_problem(*(await ops.get("/v1/keys"))[:2], 403, "forbidden")
    own = await pool.fetchval("SELECT id FROM core.api_keys WHERE key_hash = $1", hash_key(ops_key))
    assert_problem(*(await ops.post(f"/v1/keys/{own}/revoke"))[:2], 403, "forbidden")
    assert_problem(*(await orders.as_key(None).get("/v1/keys"))[:2], 401, "unauthorized")
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE revoked_at IS NULL") == before


async def test_the_list_pages_newest_first_and_never_shows_a_secret(service: ServiceFactory,
                                                                    pool: asyncpg.Pool) -> None:
    ecommerce = await service("ecommerce", auth_last_used_flush_s=0.1)
    made = [await _create(ecommerce, role="shop", label=f"shop {i}") for i in range(3)]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        status, page, _ = await ecommerce.get("/v1/keys", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert status == 200, page
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [k["id"] for k in seen] == sorted((k["id"] for k in seen), reverse=True)
    assert {k["id"] for k in made} < {k["id"] for k in seen}
    text = str(seen)
    assert all(k["key"] not in text for k in made)
    assert "key_hash" not in text and hash_key(made[0]["key"]).hex() not in text
    assert {"role", "location_id", "label", "created_at", "expires_at", "last_used_at", "status"} <= set(seen[0])
    status, shops, _ = await ecommerce.get("/v1/keys", params={"role": "shop"})
    assert {k["role"] for k in shops["items"]} == {"shop"} and len(shops["items"]) == 3
    bad = await ecommerce.get("/v1/keys", params={"cursor": "not-a-cursor"})
    assert_problem(*bad[:2], 422, "validation-failed", field="cursor")

    # Last use is recorded in batches, off the request path.
    assert (await ecommerce.as_key(made[0]["key"]).get("/v1/availability", params={"sku": "X"}))[0] == 200

    async def last_used() -> Any:
        return await pool.fetchval("SELECT last_used_at FROM core.api_keys WHERE id = $1", made[0]["id"])

    used = await eventually(last_used, within_s=10)
    assert abs(used - datetime.now(UTC)) < timedelta(minutes=1)
    assert await pool.fetchval("SELECT last_used_at FROM core.api_keys WHERE id = $1", made[1]["id"]) is None


async def test_the_last_active_admin_key_cannot_be_revoked(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inventory = await service("inventory")
    bootstrap = await pool.fetchval("SELECT id FROM core.api_keys WHERE key_hash = $1", hash_key(ADMIN_KEY))
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE role = 'admin'") == 1
    status, problem, _ = await inventory.post(f"/v1/keys/{bootstrap}/revoke")
    assert_problem(status, problem, 409, "last-admin-key")
    assert await pool.fetchval("SELECT revoked_at FROM core.api_keys WHERE id = $1", bootstrap) is None
    # An admin key that has expired is no admin: it does not count as another one.
    async with pool.acquire() as conn:
        await create_api_key(conn, "admin", expires_at=datetime.now(UTC) + timedelta(milliseconds=50))
    await asyncio.sleep(0.1)
    assert_problem(*(await inventory.post(f"/v1/keys/{bootstrap}/revoke"))[:2], 409, "last-admin-key")
    second = await _create(inventory, role="admin", label="second admin")
    status, revoked, _ = await inventory.post(f"/v1/keys/{bootstrap}/revoke")
    assert status == 200 and revoked["revoked_by"] == bootstrap, revoked
    assert (await inventory.get("/v1/keys"))[0] == 401  # the bootstrap key itself is refused now
    again = await inventory.as_key(second["key"]).post(f"/v1/keys/{bootstrap}/revoke")
    assert again[0] == 200 and again[1]["revoked_at"] == revoked["revoked_at"]  # unchanged
    assert_problem(*(await inventory.as_key(second["key"]).post(f"/v1/keys/{second['id']}/revoke"))[:2],
                   409, "last-admin-key")
    assert_problem(*(await inventory.as_key(second["key"]).post("/v1/keys/999999/revoke"))[:2], 404, "not-found")
    assert_problem(*(await inventory.as_key(second["key"]).post("/v1/keys/0/revoke"))[:2], 422)


async def test_two_admins_revoking_each_other_at_once_leave_one(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    inventory = await service("inventory")
    other = await _create(inventory, role="admin")
    bootstrap = await pool.fetchval("SELECT id FROM core.api_keys WHERE key_hash = $1", hash_key(ADMIN_KEY))
    results = await asyncio.gather(inventory.post(f"/v1/keys/{other['id']}/revoke"),
                                   inventory.as_key(other["key"]).post(f"/v1/keys/{bootstrap}/revoke"))
    assert sorted(status for status, _, _ in results) in ([200, 401], [200, 409]), results
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE role = 'admin' AND revoked_at IS NULL") == 1


async def test_an_idempotent_retry_returns_the_record_but_never_the_key_again(service: ServiceFactory,
                                                                             pool: asyncpg.Pool) -> None:
    orders = await service("orders")
    body = {"role": "shop", "label": "shopify"}
    status, first, resp = await orders.post("/v1/keys", json=body, idem="mint-1")
    assert status == 201 and first["key"].startswith("osk_") and "Idempotent-Replayed" not in resp.headers
    status, again, resp = await orders.post("/v1/keys", json=body, idem="mint-1")
    assert status == 201 and resp.headers["Idempotent-Replayed"] == "true"
    assert again["id"] == first["id"] and again["key"] is None
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE label = 'shopify'") == 1
    stored = await pool.fetchval("SELECT string_agg(response::text, '') FROM core.idempotency_keys")
    assert first["key"] not in stored and first["key"][4:] not in stored
    other = await orders.post("/v1/keys", json={"role": "ops"}, idem="mint-1")
    assert_problem(*other[:2], 409, "idempotency-key-reused")


async def test_a_service_role_cannot_mint_or_revoke_without_an_admin_key(
        pool: asyncpg.Pool, database_url: str, role_passwords: dict[str, str]) -> None:
    async with pool.acquire() as conn:
        ops_key = await create_api_key(conn, "ops")
        await create_api_key(conn, "admin")
    conn = await asyncpg.connect(role_url(database_url, "ledger", role_passwords["ledger"]))
    try:
        for admin_key in (ops_key, "osk_made_up", ""):
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.fetch("SELECT * FROM core.admin_issue_api_key($1, 'admin', NULL, NULL, NULL, $2)",
                                 admin_key, hash_key("osk_planted"))
            assert refused.value.sqlstate == "OS003"
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.fetch("SELECT * FROM core.admin_revoke_api_key($1, 1)", admin_key)
            assert refused.value.sqlstate == "OS003"
        # Reading the hashes does not help: the functions take the key itself.
        admin_hash = await conn.fetchval("SELECT key_hash FROM core.api_keys WHERE role = 'admin'")
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetch("SELECT * FROM core.admin_revoke_api_key($1, 1)", admin_hash.hex())
        for call in ("SELECT * FROM core.issue_api_key('admin', NULL, NULL, NULL, '\\x01', NULL)",
                     "SELECT * FROM core.revoke_api_key(1, NULL)", "SELECT core.acting_admin('x')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(call)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE core.api_keys SET revoked_at = NULL, expires_at = NULL")
        await conn.execute("UPDATE core.api_keys SET last_used_at = now() WHERE false")  # the one column it writes
    finally:
        await conn.close()
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys WHERE key_hash = $1", hash_key("osk_planted")) == 0


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_an_open_event_stream_ends_when_its_key_is_revoked_or_expires(
        service: ServiceFactory, pool: asyncpg.Pool, how: str) -> None:
    inventory = await service("inventory", **CACHED)
    expires_at = datetime.now(UTC) + timedelta(seconds=3) if how == "expired" else None
    async with pool.acquire() as conn:
        key = await create_api_key(conn, "shop", expires_at=expires_at)
    resp = await inventory.client.get("/v1/events", headers={"Authorization": f"Bearer {key}"})
    try:
        assert resp.status == 200
        assert await resp.content.readline() == b"retry: 2000\n"
        if how == "revoked":
            await pool.execute("UPDATE core.api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(key))
        rest = await asyncio.wait_for(resp.content.read(), 10)  # to the end: the server closed it
    finally:
        resp.close()
    assert f": API key {how}".encode() in rest
    assert (await inventory.as_key(key).get("/v1/events"))[0] == 401
