"""Backup and restore, step by step. Every refusal (BackupRefused) comes before the first change.

Backup: refuse an unknown source or a non-empty DIR; open one REPEATABLE READ transaction, export its
snapshot and read the manifest's facts in it; pg_dump that snapshot; copy the trust material; write
the manifest last.

Restore (`plan_restore` before the database is started, `restore` once it is): the manifest and every
checksum; migrations no newer than the code; tools new enough for the dump; no trust material and no
data in the way without --force; no omnistock service connected. Then the dump goes in as one
transaction (with --force, after dropping what was there, in the same transaction), the trust material
is put in place, and `omnistock migrate`'s work runs: service logins, migrations newer than the backup,
the grants of shared/roles.py, the bootstrap admin key.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import asyncpg

from services import registry, runtime
from services.backup import ledger_files, pg_tools, repository
from services.backup.manifest import (
    DB_DIR,
    LEDGER_DIR,
    MANIFEST,
    BackupFailed,
    BackupRefused,
    Manifest,
    code_migrations,
    file_problems,
    load_manifest,
    migration_problems,
    record_files,
    write_manifest,
)
from shared.embedded_db import client_tool, tool_major_version
from shared.migrations import CORE_MIGRATIONS
from shared.roles import configured_logins
from shared.settings import Settings

BACKUP_APP, RESTORE_APP = "omnistock-backup", "omnistock-restore"


@dataclass(frozen=True)
class BackupReport:
    directory: Path
    files: int
    size: int
    migrations: int
    ledger_files: int
    tree_size: int
    server_version: str


@dataclass(frozen=True)
class RestorePlan:
    source: Path
    manifest: Manifest
    force: bool
    pg_restore: Path
    psql: Path


@dataclass(frozen=True)
class RestoreReport:
    database: str
    replaced: list[str]
    applied: list[str]
    ledger_files: int
    tree_size: int


def _owner_url(settings: Settings) -> str:
    if not settings.database_url:
        raise BackupRefused("backup and restore need the database owner's DATABASE_URL (or the embedded database)")
    return settings.database_url


def _tool(name: str, settings: Settings) -> Path:
    try:
        return client_tool(name, settings.pg_bin_dir)
    except FileNotFoundError as exc:
        raise BackupRefused(f"{name} is needed: {exc}") from None


def _require_owner(settings: Settings) -> None:
    """Service URLs alone (a container's) may not dump, drop or grant: that is the owner's work."""
    if not settings.database_url and configured_logins(settings):
        raise BackupRefused("backup and restore work as the database owner: set DATABASE_URL (the owner's URL)"
                            " beside the services' OMNISTOCK_<SERVICE>_DATABASE_URL")


def check_source(settings: Settings) -> None:
    """Without DATABASE_URL, back up only an embedded cluster that exists (rather than start a new one)."""
    _require_owner(settings)
    _tool("pg_dump", settings)
    pgdata = settings.data_dir / "pg"
    if not settings.database_url and not (pgdata / "PG_VERSION").exists():
        raise BackupRefused(f"no embedded database in {pgdata.resolve()} and no DATABASE_URL: nothing to back up"
                            " (is OMNISTOCK_DATA_DIR the services' one?)")


def prepare_target(directory: Path) -> Path:
    """A new or empty directory, made 0700. Never a non-empty one, not even an older backup: writing a
    backup over another leaves neither if it fails half-way. Use a new directory per backup."""
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise BackupRefused(f"{directory} is not a directory")
    if directory.is_dir() and any(directory.iterdir()):
        what = "an omnistock backup" if (directory / MANIFEST).exists() else "files"
        raise BackupRefused(f"{directory} already holds {what}: a backup goes into a new or empty directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # mkdir's mode passes through the umask; an existing empty directory is tightened
    return directory.resolve()


async def backup(settings: Settings, directory: Path, jobs: int) -> BackupReport:
    url = _owner_url(settings)
    pg_dump = _tool("pg_dump", settings)
    dump_major = tool_major_version(pg_dump)
    try:
        conn = await asyncpg.connect(url, server_settings={"application_name": BACKUP_APP})
        try:
            # pg_dump imports this transaction's snapshot, so the manifest's facts and the dump agree.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snap = await repository.read_snapshot(conn)
                if not snap.migrations:
                    raise BackupRefused(f"database {snap.database} holds no omnistock schema: nothing to back up")
                pg_tools.check_versions(snap.server_major, dump_major, f"pg_dump ({pg_dump})")
                if snap.ledger_entries and not ledger_files.in_use(settings.data_dir):
                    raise BackupRefused(
                        f"the database holds {snap.ledger_entries} ledger entries but"
                        f" {ledger_files.ledger_root(settings.data_dir).resolve()} holds no identities to verify them:"
                        " is OMNISTOCK_DATA_DIR the one the ledger and finance services use?")
                await pg_tools.dump(pg_dump, pg_tools.libpq_target(url, BACKUP_APP), snap.snapshot_id,
                                    directory / DB_DIR, jobs)
        finally:
            await conn.close()
        # After the dump: certificates are only ever added (a rotation archives the old one) and revoked
        # serials only grow, so the files copied now vouch for every entry in the dump and carry every
        # revocation made until now.
        copied = ledger_files.copy_into_backup(settings.data_dir, directory)
        files = record_files(directory)
        write_manifest(directory, Manifest(
            omnistock_version=version("omnistock"),
            created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            database={"name": snap.database, "server_version": snap.server_version,
                      "server_major": snap.server_major, "pg_dump_major": dump_major},
            migrations=snap.migrations,
            ledger={"entries": snap.ledger_entries, "tree_size": snap.ledger_tree_size,
                    "excluded": [f"{LEDGER_DIR}/{ledger_files.OFFLINE_CA_DIR}/"]},
            files=files))
    except BaseException:
        for child in (DB_DIR, LEDGER_DIR):  # prepare_target made the directory empty: leave it so
            shutil.rmtree(directory / child, ignore_errors=True)
        raise
    return BackupReport(directory, len(files) + 1, sum(r.size for r in files.values()), len(snap.migrations),
                        copied, snap.ledger_tree_size, snap.server_version)


def plan_restore(settings: Settings, source: Path, force: bool) -> RestorePlan:
    """Every check that needs no database, before one is started (a fresh data dir stays untouched)."""
    _require_owner(settings)
    source = source.expanduser().resolve()
    manifest = load_manifest(source)
    problems = file_problems(source, manifest)
    if problems:
        raise BackupRefused(f"the backup in {source} does not match its manifest:\n  " + "\n  ".join(problems))
    problems = migration_problems(manifest.migrations, code_migrations([CORE_MIGRATIONS, *registry.all_migrations()]))
    if problems:
        raise BackupRefused(f"the backup (omnistock {manifest.omnistock_version}) has migrations this omnistock"
                            f" ({version('omnistock')}) does not; upgrade omnistock first:\n  " + "\n  ".join(problems))
    pg_restore, psql = _tool("pg_restore", settings), _tool("psql", settings)
    restore_major, dump_major = tool_major_version(pg_restore), int(manifest.database["pg_dump_major"])
    if restore_major < dump_major:
        raise BackupRefused(f"the dump was written by pg_dump {dump_major}; pg_restore ({pg_restore}) is"
                            f" {restore_major}: point OMNISTOCK_PG_BIN_DIR at PostgreSQL {dump_major} or newer")
    present = ledger_files.in_use(settings.data_dir)
    if present and not force:
        raise BackupRefused(
            f"{ledger_files.ledger_root(settings.data_dir).resolve()} already holds trust material ({len(present)}"
            f" files, e.g. {present[0]}): restore replaces it only with --force")
    return RestorePlan(source, manifest, force, pg_restore, psql)


async def restore(settings: Settings, plan: RestorePlan) -> RestoreReport:
    url = _owner_url(settings)
    manifest = plan.manifest
    conn = await asyncpg.connect(url, server_settings={"application_name": RESTORE_APP})
    try:
        database = await conn.fetchval("SELECT current_database()")
        sessions = await repository.omnistock_sessions(conn, (RESTORE_APP,))
        if sessions:
            raise BackupRefused(f"{len(sessions)} omnistock connections are open on {database}"
                                f" ({', '.join(sorted(set(sessions)))}): stop the services first")
        major = await repository.server_major(conn)
        if major < int(manifest.database["server_major"]):
            raise BackupRefused(f"the backup is of PostgreSQL {manifest.database['server_version']}; {database}"
                                f" runs {major}: restore into a server of the same or a newer major version")
        occupied = sorted(s for s, n in (await repository.own_objects(conn)).items() if s != "public" or n)
        if occupied and not plan.force:
            raise BackupRefused(f"database {database} is not empty (schemas: {', '.join(occupied)}): restore"
                                " replaces it only with --force")
        clearing = await repository.clearing_statements(conn) if plan.force else []
    finally:
        await conn.close()
    staged = ledger_files.stage(plan.source, manifest.files, settings.data_dir)
    try:
        await pg_tools.restore(plan.pg_restore, plan.psql, pg_tools.libpq_target(url, RESTORE_APP),
                               plan.source / DB_DIR, clearing)
        ledger_files.install(staged, settings.data_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already once installed
    applied = await runtime.migrate(settings, force_grants=True)
    conn = await asyncpg.connect(url, server_settings={"application_name": RESTORE_APP})
    try:
        tree_size = await repository.ledger_tree_size(conn)
        await repository.analyze(conn)
    finally:
        await conn.close()
    if tree_size != int(manifest.ledger["tree_size"]):
        raise BackupFailed(f"restored, but the ledger tree size {tree_size} differs from the backup's"
                           f" {manifest.ledger['tree_size']}")
    return RestoreReport(database, occupied, applied, len(ledger_files.in_use(settings.data_dir)), tree_size)
