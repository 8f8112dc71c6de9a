"""`omnistock backup` and `omnistock restore` refusing what would be wrong, with nothing changed.

(The drill that restores a whole business into a fresh data directory: tests/drills/test_backup_drill.py.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from benchmarks.drills.checks import stock_findings
from ledger import identity
from services.backup import pg_tools
from services.backup.manifest import BackupFailed, BackupRefused, Manifest, Migration, load_manifest, migration_problems
from services.backup.pg_tools import check_versions
from services.backup.use_cases import plan_restore
from services.inventory import repository as inventory_repo
from services.inventory import use_cases as inventory
from shared.embedded_db import client_tool
from shared.settings import Settings
from tests.conftest import role_url, with_database
from tests.drills.backup_facts import table_digests
from tests.ledger.test_ledger_cli import _fill
from tests.test_cli import cli_env, run_cli


async def _add_location(url: str, location_id: str) -> None:
    conn = await asyncpg.connect(url)  # closed at once: restore refuses while omnistock connections are open
    try:
        await conn.execute("INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup)"
                           " VALUES ($1, $1, 'store', 52.0, 4.0, true, true)", location_id)
    finally:
        await conn.close()


async def _locations(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM inventory.locations ORDER BY id")]
    finally:
        await conn.close()


@pytest.fixture
async def backup_dir(database_url: str, database_env: dict[str, str], tmp_path: Path) -> Path:
    """A backup of the test's database with one location, and its data directory's identities."""
    await _add_location(database_url, "kept")
    identity.init_identities(tmp_path / "source")
    env = cli_env(tmp_path, database_env)
    env["OMNISTOCK_DATA_DIR"] = str(tmp_path / "source")
    made = run_cli("backup", str(tmp_path / "backup"), env=env)
    assert made.returncode == 0, made.stderr
    return tmp_path / "backup"


def _restore_env(tmp_path: Path, database_env: dict[str, str], name: str) -> dict[str, str]:
    env = cli_env(tmp_path, database_env)
    env["OMNISTOCK_DATA_DIR"] = str(tmp_path / name)
    return env


def _flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _tampered(pristine: Path, into: Path, tamper: str) -> Path:
    backup = shutil.copytree(pristine, into)
    if tamper == "dump":
        _flip_a_byte(max((backup / "db").iterdir(), key=lambda p: p.stat().st_size))
    elif tamper == "certificate":
        _flip_a_byte(backup / "ledger" / "msp" / "finance" / "ca.pem")
    elif tamper == "extra CA":  # a CA slipped in would vouch for whatever it signs
        shutil.copy(backup / "ledger" / "msp" / "ops" / "ca.pem", backup / "ledger" / "msp" / "ops" / "b.pem")
    elif tamper == "missing":
        (backup / "db" / "toc.dat").unlink()
    return backup


async def test_a_tampered_backup_is_refused_and_nothing_is_restored(
        backup_dir: Path, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    target = await _emptied(database_url)
    dump = _tampered(backup_dir, tmp_path / "tampered-dump", "dump")
    result = run_cli("restore", "--force", str(dump), env=_restore_env(tmp_path, database_env, "target"))
    assert result.returncode == 1
    assert "checksum does not match" in result.stderr and "nothing was restored" in result.stderr, result.stderr
    assert await table_digests(database_url) == target  # the database as it was
    assert not (tmp_path / "target").exists()  # and no data directory made
    # The other ways, through the same check the command makes before it starts a database.
    settings = Settings(_env_file=None, data_dir=tmp_path / "target")  # type: ignore[call-arg]
    for tamper, named in (("certificate", "ledger/msp/finance/ca.pem: checksum does not match"),
                          ("extra CA", "ledger/msp/ops/b.pem: not in the manifest"),
                          ("missing", "db/toc.dat: missing")):
        with pytest.raises(BackupRefused, match=named):
            plan_restore(settings, _tampered(backup_dir, tmp_path / tamper, tamper), force=True)
    assert plan_restore(settings, backup_dir, force=False).manifest.ledger["tree_size"] == 0  # untouched: fine


async def _emptied(url: str) -> dict[str, tuple[int, str]]:
    """Drop every schema of the test's database, as a new server's database would be, and read it."""
    conn = await asyncpg.connect(url)
    try:
        for schema in ("core", "inventory", "orders", "ecommerce", "finance", "ledger"):
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.execute("DROP TABLE public.omnistock_migrations")
    finally:
        await conn.close()
    return await table_digests(url)


async def test_restore_over_a_non_empty_database_needs_force_and_force_replaces_it(
        backup_dir: Path, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    await _add_location(database_url, "after-the-backup")
    env = _restore_env(tmp_path, database_env, "target")
    refused = run_cli("restore", str(backup_dir), env=env)
    assert refused.returncode == 1 and "not empty" in refused.stderr and "--force" in refused.stderr, refused.stderr
    assert await _locations(database_url) == ["after-the-backup", "kept"]

    service = await asyncpg.connect(database_url, server_settings={"application_name": "omnistock-orders"})
    try:  # a running service: not even --force restores under it
        busy = run_cli("restore", "--force", str(backup_dir), env=env)
    finally:
        await service.close()
    assert busy.returncode == 1 and "stop the services first" in busy.stderr, busy.stderr
    assert await _locations(database_url) == ["after-the-backup", "kept"]

    offline = tmp_path / "target" / "ledger" / "offline-ca"
    offline.mkdir(parents=True)
    (offline / "ca.key").write_text("stays where it is")
    identity.init_identities(tmp_path / "target", ["ops"])  # trust material of another installation
    replaced = run_cli("restore", "--force", str(backup_dir), env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert await _locations(database_url) == ["kept"]
    source_ca = (tmp_path / "source" / "ledger" / "msp" / "ops" / "ca.pem").read_bytes()
    assert (tmp_path / "target" / "ledger" / "msp" / "ops" / "ca.pem").read_bytes() == source_ca
    assert (offline / "ca.key").read_text() == "stays where it is"


def test_a_backup_newer_than_the_code_is_refused(backup_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    manifest["migrations"].append({"schema": "orders", "version": "9999_from_the_future.sql", "checksum": "00"})
    (backup_dir / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(_env_file=None, data_dir=tmp_path / "target")  # type: ignore[call-arg]
    with pytest.raises(BackupRefused, match="upgrade omnistock first:\n  orders/9999_from_the_future.sql"):
        plan_restore(settings, backup_dir, force=True)


def test_backup_refuses_a_directory_that_is_not_empty(database_env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "backup"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_cli("backup", str(target), env=cli_env(tmp_path, database_env))
    assert result.returncode == 1 and "new or empty directory" in result.stderr, result.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_backup_without_a_database_to_back_up_starts_none(tmp_path: Path) -> None:
    result = run_cli("backup", str(tmp_path / "backup"), env=cli_env(tmp_path, None))
    assert result.returncode == 1 and "nothing to back up" in result.stderr, result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "backup").exists()


def test_a_manifest_naming_a_file_outside_the_backup_is_refused(tmp_path: Path) -> None:
    manifest = Manifest("0.1.0", "2026-01-01T00:00:00Z", {}, [], {})
    raw = json.loads(manifest.to_json())
    raw["files"] = {"ledger/../../etc/passwd": {"sha256": "00", "size": 1, "mode": "0644"}}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BackupRefused, match="outside db/ and ledger/"):
        load_manifest(tmp_path)


def test_older_backups_restore_and_changed_or_unknown_migrations_do_not() -> None:
    known = {("core", "0001_core.sql"): "a", ("core", "0002_events.sql"): "b"}
    assert migration_problems([Migration("core", "0001_core.sql", "a")], known) == []
    problems = migration_problems([Migration("core", "0001_core.sql", "x"), Migration("core", "0003_new.sql", "c")],
                                  known)
    assert problems == ["core/0001_core.sql: differs from this omnistock's file of that name",
                        "core/0003_new.sql: applied in the backup, unknown to this omnistock (newer)"]


def test_tools_older_than_the_server_or_missing_are_refused_with_what_to_do(tmp_path: Path) -> None:
    check_versions(server_major=16, dump_major=18, what="pg_dump")  # newer tools dump older servers
    with pytest.raises(BackupRefused, match="OMNISTOCK_PG_BIN_DIR"):
        check_versions(server_major=19, dump_major=18, what="pg_dump")
    env = cli_env(tmp_path, None)
    env["OMNISTOCK_PG_BIN_DIR"] = str(tmp_path / "no-postgres-here")
    result = run_cli("backup", str(tmp_path / "backup"), env=env)
    assert result.returncode == 1 and "pg_dump is needed" in result.stderr and "OMNISTOCK_PG_BIN_DIR" in result.stderr
    assert not (tmp_path / "backup").exists()


async def test_a_restore_that_fails_half_way_changes_nothing_even_with_force(
        backup_dir: Path, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    target = await _emptied(database_url)
    conn = await asyncpg.connect(database_url)
    try:  # what --force drops (a schema with a row), and a type the dump's table cannot be created beside
        await conn.execute("CREATE SCHEMA precious; CREATE TABLE precious.t (x int); INSERT INTO precious.t VALUES (1)")
        await conn.execute("CREATE TYPE public.omnistock_migrations AS (x int)")
    finally:
        await conn.close()
    before = await table_digests(database_url)
    assert before != target and "precious.t" in before
    failed = run_cli("restore", "--force", str(backup_dir), env=_restore_env(tmp_path, database_env, "target"))
    assert failed.returncode == 1 and "nothing restored" in failed.stderr, failed.stderr
    assert await table_digests(database_url) == before
    assert not (tmp_path / "target" / "ledger").exists()  # the staged trust material went too

    # pg_restore itself dying half-way (a table's data cut short): psql reaches the end of its input,
    # and still nothing commits.
    broken = shutil.copytree(backup_dir, tmp_path / "broken")
    data = max((broken / "db").glob("*.dat.gz"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(BackupFailed, match="pg_restore failed"):
        await pg_tools.restore(client_tool("pg_restore"), client_tool("psql"), pg_tools.libpq_target(database_url, "t"),
                               broken / "db", clearing=["DROP SCHEMA precious CASCADE"])
    assert await table_digests(database_url) == before


def test_the_tools_get_the_password_through_the_environment_not_the_command_line() -> None:
    target = pg_tools.libpq_target("postgresql://owner:s%40cret@db.example:5433/omnistock?sslmode=require", "x")
    assert target.conninfo == "postgresql://owner@db.example:5433/omnistock?sslmode=require"
    assert target.env["PGPASSWORD"] == "s@cret" and target.env["PGAPPNAME"] == "x"
    assert "PGPASSWORD" not in pg_tools.libpq_target("postgresql://owner@db.example/omnistock", "x").env


async def test_backup_refuses_ledger_entries_without_their_identities_and_a_database_without_omnistock(
        settings: Settings, database_url: str, database_env: dict[str, str], tmp_path: Path) -> None:
    await _fill(settings)  # 30 entries, signed with the identities under settings.data_dir
    env = cli_env(tmp_path / "elsewhere", database_env)  # a data directory without them
    wrong_dir = run_cli("backup", str(tmp_path / "b1"), env=env)
    assert wrong_dir.returncode == 1 and "30 ledger entries" in wrong_dir.stderr, wrong_dir.stderr
    assert list((tmp_path / "b1").iterdir()) == []  # what it had begun is gone
    await _emptied(database_url)
    empty = run_cli("backup", str(tmp_path / "b2"), env=env)
    assert empty.returncode == 1 and "holds no omnistock schema" in empty.stderr, empty.stderr


async def test_a_backup_taken_under_writes_is_one_moment(
        pool: asyncpg.Pool, server_url: str, role_passwords: dict[str, str], database_env: dict[str, str],
        tmp_path: Path) -> None:
    """Levels and movements are dumped by different pg_dump workers while writers change both: the
    restored levels still equal their movements, at a moment between the first and the last write."""
    await inventory.seed(pool, 2, 20)
    rows = await pool.fetch("SELECT sku, location_id FROM inventory.stock_levels ORDER BY 1, 2")
    levels = [(r["sku"], r["location_id"]) for r in rows]
    start = await pool.fetchval("SELECT count(*) FROM inventory.stock_movements")
    stop, warmed_up, written = asyncio.Event(), asyncio.Event(), [0]

    async def write(n: int) -> None:
        while not stop.is_set():
            sku, location_id = levels[(written[0] * 7 + n) % len(levels)]
            async with pool.acquire() as conn, conn.transaction():
                await inventory_repo.apply_movement(conn, sku, location_id, "receipt", 1, actor="writer")
            written[0] += 1
            if written[0] >= 20:
                warmed_up.set()

    writers = [asyncio.create_task(write(n)) for n in range(3)]
    try:
        await warmed_up.wait()
        env = cli_env(tmp_path, database_env)
        env["OMNISTOCK_DATA_DIR"] = str(tmp_path / "source")
        made = await asyncio.to_thread(run_cli, "backup", "--jobs", "2", str(tmp_path / "backup"), env=env)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert made.returncode == 0, made.stderr
    final = await pool.fetchval("SELECT count(*) FROM inventory.stock_movements")

    name = f"restored_{tmp_path.name[-20:]}".replace("-", "_").lower()
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(server_url, name)
        target = {"DATABASE_URL": url, **{f"OMNISTOCK_{s.upper()}_DATABASE_URL": role_url(url, s, pw)
                                          for s, pw in role_passwords.items()}}
        restored = await asyncio.to_thread(run_cli, "restore", str(tmp_path / "backup"),
                                           env=_restore_env(tmp_path, target, "target"))
        assert restored.returncode == 0, restored.stderr
        conn = await asyncpg.connect(url)
        try:
            assert await stock_findings(conn) == {k: [] for k in ("levels_off_movements", "reserved_off_open_orders",
                                                                  "oversold_levels")}
            moved = await conn.fetchval("SELECT count(*) FROM inventory.stock_movements")
        finally:
            await conn.close()
        assert start + 20 <= moved < final, (start, moved, final)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
