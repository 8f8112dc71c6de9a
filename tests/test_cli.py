"""The `omnistock` command, run as a real process the way operators run it."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from yarl import URL

from services.cli import _demo
from shared.auth import ROLES, create_api_key, hash_key
from shared.embedded_db import SECRETS_FILE, EmbeddedPostgres, free_port
from shared.settings import Settings
from tests.conftest import ServiceFactory
from tests.shared.test_keys import _refused_within

SERVICES = ("inventory", "orders", "ecommerce", "finance", "ledger")

OMNISTOCK = [sys.executable, "-m", "services.cli"]


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OMNISTOCK, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def cli_env(tmp_path: Path, database: str | dict[str, str] | None) -> dict[str, str]:
    """`database`: the owner's URL alone, or the `database_env` fixture (owner + every service role)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISTOCK_") and k != "DATABASE_URL"}
    env["OMNISTOCK_DATA_DIR"] = str(tmp_path / "data")
    env["OMNISTOCK_LOG_LEVEL"] = "warning"
    if isinstance(database, str):
        env["DATABASE_URL"] = database
    elif database:
        env.update(database)
    return env


async def test_keys_create_prints_the_key_last_and_it_is_stored(database_url: str, database_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    env = cli_env(tmp_path, database_env)
    result = run_cli("keys", "create", "--role", "ops", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.split()[-1]
    assert key.startswith("osk_")
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT role FROM core.api_keys ORDER BY id DESC LIMIT 1") == "ops"
    finally:
        await conn.close()
    refused = run_cli("keys", "create", "--role", "store", env=env)
    assert refused.returncode != 0 and "--location" in refused.stderr
    unknown = run_cli("keys", "create", "--role", "store", "--location", "nowhere", env=env)
    assert unknown.returncode != 0 and "unknown location" in unknown.stderr


async def test_keys_list_revoke_and_create_with_expiry_and_label(database_url: str, database_env: dict[str, str],
                                                                 tmp_path: Path, service: ServiceFactory) -> None:
    env = cli_env(tmp_path, database_env)
    orders = await service("orders", auth_cache_ttl_s=300.0)
    made = run_cli("keys", "create", "--role", "ops", "--label", "till 3, Soho", "--expires", "12h", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.split()[-1]
    assert key.startswith("osk_") and key not in made.stderr
    tablet = orders.as_key(key)
    assert (await tablet.get("/v1/orders"))[0] == 200  # cached by the running service now

    listed = run_cli("keys", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    records = [orjson.loads(line) for line in listed.stdout.splitlines()]
    [mine] = [r for r in records if r["label"] == "till 3, Soho"]
    expires = datetime.fromisoformat(mine["expires_at"])
    assert timedelta(hours=11, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=12)
    assert mine["status"] == "active" and "key_hash" not in mine and key[4:] not in listed.stdout
    table = run_cli("keys", "list", env=env)
    assert table.returncode == 0 and "till 3, Soho" in table.stdout and key[4:] not in table.stdout

    revoked = run_cli("keys", "revoke", str(mine["id"]), env=env)
    assert revoked.returncode == 0, revoked.stderr
    await _refused_within(tablet, "/v1/orders", 1.0)  # by the other process, through the database
    [after] = [orjson.loads(line) for line in run_cli("keys", "list", "--json", "--status", "revoked",
                                                     env=env).stdout.splitlines()]
    assert after["id"] == mine["id"] and after["revoked_at"]

    admin_id = [r["id"] for r in records if r["role"] == "admin"]
    for args, expected in [(("keys", "revoke", str(admin_id[0])), "last active admin key"),
                           (("keys", "revoke", "987654"), "no such API key"),
                           (("keys", "create", "--role", "ops", "--expires", "soon"), "--expires"),
                           (("keys", "create", "--role", "ops", "--expires", "2001-01-01T00:00:00"), "future"),
                           (("keys", "create", "--role", "ops", "--label", "bell\x07"), "--label")]:
        refused = run_cli(*args, env=env)
        assert refused.returncode != 0 and expected in refused.stderr, (args, refused.stderr)
    assert len(run_cli("keys", "list", "--json", env=env).stdout.splitlines()) == len(records)


async def test_a_second_demo_hands_out_the_same_keys_and_revokes_stray_ones(
        settings: Settings, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    first = await _demo(settings)
    shown = capsys.readouterr()
    assert set(first) == set(ROLES) and all(key in shown.err for key in first.values())
    assert "osk_" not in shown.out
    keys_file = settings.data_dir / "demo-keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    demo_count = "SELECT count(*) FROM core.api_keys WHERE label = 'demo'"
    assert await pool.fetchval(demo_count) == len(ROLES)

    assert await _demo(settings) == first  # the same keys, none minted
    assert await pool.fetchval(demo_count) == len(ROLES)

    # One demo key revoked meanwhile, and a demo key from elsewhere: the ops key is replaced, the stray revoked.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE core.api_keys SET revoked_at = now() WHERE key_hash = $1", hash_key(first["ops"]))
        stray = await create_api_key(conn, "shop", label="demo")
    third = await _demo(settings)
    assert third["ops"] != first["ops"] and {r: k for r, k in third.items() if r != "ops"} == {
        r: k for r, k in first.items() if r != "ops"}
    active = await pool.fetch("SELECT key_hash FROM core.api_keys WHERE label = 'demo' AND revoked_at IS NULL")
    assert {r["key_hash"] for r in active} == {hash_key(k) for k in third.values()}
    assert hash_key(stray) not in {r["key_hash"] for r in active}
    assert orjson.loads(keys_file.read_bytes()) == third


def test_a_weak_bootstrap_key_stops_the_cli_with_a_clear_error(tmp_path: Path) -> None:
    env = cli_env(tmp_path, "postgresql://nobody@127.0.0.1:1/none")
    env["OMNISTOCK_BOOTSTRAP_ADMIN_KEY"] = "admin-admin-admin-admin-admin-admin"
    result = run_cli("migrate", env=env)
    assert result.returncode != 0
    assert "OMNISTOCK_BOOTSTRAP_ADMIN_KEY refused" in result.stderr
    assert "admin-admin" not in result.stderr and "Traceback" not in result.stderr


async def test_seed_creates_locations_skus_and_stock_with_movements(database_url: str, database_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    result = run_cli("seed", "--stores", "5", "--skus", "40", env=cli_env(tmp_path, database_env))
    assert result.returncode == 0, result.stderr
    assert "seeded 6 locations, 40 SKUs, 240 stock levels" in result.stdout
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM inventory.stock_movements") == 240
        lats = await conn.fetch("SELECT lat, lon FROM inventory.locations")
        assert all(-90 <= r["lat"] <= 90 and -180 <= r["lon"] <= 180 for r in lats)
    finally:
        await conn.close()


def test_up_serves_and_stops_cleanly_on_sigterm(database_url: str, database_env: dict[str, str],
                                                tmp_path: Path) -> None:
    env = cli_env(tmp_path, database_env)
    port = free_port()
    env["OMNISTOCK_INVENTORY_PORT"] = str(port)
    for name in ("orders", "ecommerce", "finance", "ledger"):
        env[f"OMNISTOCK_{name.upper()}_PORT"] = str(free_port())
    proc = subprocess.Popen([*OMNISTOCK, "up", "--demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("inventory never became ready")
        # A long query (a batch of SKUs, say) reaches the app, which answers with a problem, not aiohttp's
        # bare 400 for an over-long request line.
        long_url = f"http://127.0.0.1:{port}/v1/locations?" + "&".join(f"x{i}=1" for i in range(1500))
        try:
            urllib.request.urlopen(long_url, timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 401 and exc.headers["Content-Type"] == "application/problem+json"
        else:
            raise AssertionError("an unauthenticated request was answered")
        # Every service's pool logged in as that service's role, none as the owner.
        expected = {f"omnistock-{name}": f"omnistock_{name}" for name in SERVICES}
        expected |= {"omnistock-ecommerce-projector": "omnistock_ecommerce",
                     "omnistock-finance-ledger": "omnistock_finance"}
        deadline = time.monotonic() + 60  # inventory answered first; wait for the others' pools
        while not set(expected) <= set(logins := asyncio.run(_logins(database_url))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {k: logins.get(k) for k in expected} == expected
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "omnistock is up" in out
    # The demo keys go to the terminal (stderr), not into stdout's stream of JSON log lines.
    assert any(line.startswith("auditor") and line.split()[-1].startswith("osk_") for line in err.splitlines())
    assert "osk_" not in out


async def _logins(database_url: str) -> dict[str, str]:
    """application_name -> the role it logged in as, for this test's database."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT DISTINCT application_name, usename::text FROM pg_stat_activity"
                                " WHERE datname = current_database() AND application_name LIKE 'omnistock-%'")
    finally:
        await conn.close()
    return {r["application_name"]: r["usename"] for r in rows}


def test_migrate_on_the_embedded_database(tmp_path: Path) -> None:
    env = cli_env(tmp_path, None)
    env["OMNISTOCK_EMBEDDED_PG_PORT"] = str(free_port())
    result = run_cli("migrate", env=env)
    assert result.returncode == 0, result.stderr
    pgdata = tmp_path / "data" / "pg"
    assert (pgdata / "PG_VERSION").exists()
    # The command started the cluster for itself, so it stopped it again.
    assert not (pgdata / "postmaster.pid").exists(), (result.stderr, (pgdata / "server.log").read_text()[-3000:])
    # The passwords it made are readable by this user alone; each service role can log in with its own.
    secrets_file = pgdata / SECRETS_FILE
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600 and stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    server = EmbeddedPostgres(pgdata, int(env["OMNISTOCK_EMBEDDED_PG_PORT"]), durable=False)
    server.start()
    try:
        asyncio.run(_each_role_logs_in(server))
    finally:
        server.stop(mode="immediate")


async def _each_role_logs_in(server: EmbeddedPostgres) -> None:
    for service in SERVICES:
        conn = await asyncpg.connect(server.role_dsn(f"omnistock_{service}"))
        try:
            assert await conn.fetchval("SELECT count(*) FROM public.omnistock_migrations") > 0
        finally:
            await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(str(URL(server.dsn).with_password("guess")))


async def test_the_demo_has_one_console_user_per_role_with_the_same_passwords_next_time(
        settings: Settings, pool: asyncpg.Pool) -> None:
    from services.console.passwords import verify_password

    await _demo(settings)
    users_file = settings.data_dir / "demo-users.json"
    first = orjson.loads(users_file.read_bytes())
    assert set(first) == {"demo-store", "demo-ops", "demo-finance", "demo-auditor"}
    assert users_file.stat().st_mode & 0o777 == 0o600
    await _demo(settings)
    assert orjson.loads(users_file.read_bytes()) == first
    for username, password in first.items():
        stored = await pool.fetchval("SELECT password_hash FROM console.users WHERE username = $1", username)
        assert verify_password(stored, password)
    assert await pool.fetchval("SELECT location_id FROM console.users WHERE username = 'demo-store'")


def run_with_stdin(*args: str, env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OMNISTOCK, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


async def test_users_create_list_disable(database_url: str, database_env: dict[str, str], tmp_path: Path,
                                         pool: asyncpg.Pool) -> None:
    env = cli_env(tmp_path, database_env)
    password = "a long and varied pass phrase\n"
    for args, expected in [(("users", "create", "Bad Name", "--role", "ops"), "username"),
                           (("users", "create", "sam", "--role", "store"), "location"),
                           (("users", "create", "sam", "--role", "store", "--location", "nowhere"), "nowhere"),
                           (("users", "create", "sam", "--role", "boss"), "--role")]:
        refused = run_with_stdin(*args, "--password-stdin", env=env, stdin=password)
        assert refused.returncode != 0 and expected in refused.stderr, (args, refused.stderr)
    weak = run_with_stdin("users", "create", "olga", "--role", "ops", "--password-stdin", env=env, stdin="short\n")
    assert weak.returncode != 0 and "password" in weak.stderr
    assert await pool.fetchval("SELECT count(*) FROM console.users") == 0

    made = run_with_stdin("users", "create", "olga", "--role", "ops", "--name", "Olga K", "--password-stdin",
                          env=env, stdin=password)
    assert made.returncode == 0, made.stderr
    again = run_with_stdin("users", "create", "olga", "--role", "ops", "--password-stdin", env=env, stdin=password)
    assert again.returncode != 0 and "exists" in again.stderr
    [listed] = [orjson.loads(line) for line in run_cli("users", "list", "--json", env=env).stdout.splitlines()]
    assert (listed["username"], listed["display_name"], listed["role"]) == ("olga", "Olga K", "ops")
    assert "password" not in " ".join(listed) and "argon2" not in run_cli("users", "list", env=env).stdout
    async with pool.acquire() as conn:  # a key of hers, as a sign-in would have made
        key_id = await conn.fetchval("SELECT console.issue_person_key(id, '\\x01', now() + interval '1 hour')"
                                     " FROM console.users WHERE username = 'olga'")
    disabled = run_cli("users", "disable", "olga", env=env)
    assert disabled.returncode == 0, disabled.stderr
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM core.api_keys WHERE id = $1", key_id)
    assert run_cli("users", "disable", "nobody", env=env).returncode != 0
