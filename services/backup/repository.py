"""All SQL of backup and restore, run as the database owner."""

from __future__ import annotations

from dataclasses import dataclass

from services.backup.manifest import Migration
from shared.db import Connection
from shared.roles import GRANTS_MARK

# Schemas of the server itself; everything else in a database is someone's data.
_OWN_OBJECTS = """
SELECT n.nspname AS schema, count(c.oid) AS relations
FROM pg_namespace n
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
     AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                     AND d.deptype = 'e')
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                  AND d.deptype = 'e')
GROUP BY n.nspname ORDER BY n.nspname
"""

# What --force drops, in one transaction with the restore (pg_tools.restore): every schema of the
# database but public, and public's own relations and routines (public itself stays: initdb made it,
# a dump does not recreate it, and an owner who is not a superuser may not be allowed to drop it).
# Objects that belong to an extension stay with their extension.
_CLEARING = """
SELECT format('DROP SCHEMA %I CASCADE', n.nspname) AS statement, 1 AS step
FROM pg_namespace n
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', 'public')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                  AND d.deptype = 'e')
UNION ALL
SELECT format('DROP %s IF EXISTS public.%I CASCADE',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.relname), 2
FROM pg_class c
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('e', 'a', 'i'))
UNION ALL
SELECT format('DROP ROUTINE IF EXISTS %s CASCADE', p.oid::regprocedure), 3
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
ORDER BY step, statement
"""


@dataclass(frozen=True)
class Snapshot:
    """What the manifest says of the database, read in the snapshot pg_dump dumps."""

    snapshot_id: str
    database: str
    server_version: str
    server_major: int
    migrations: list[Migration]
    ledger_entries: int
    ledger_tree_size: int


async def read_snapshot(conn: Connection) -> Snapshot:
    """Call inside a REPEATABLE READ transaction: pg_dump --snapshot then sees exactly these rows."""
    snapshot_id = await conn.fetchval("SELECT pg_export_snapshot()")
    row = await conn.fetchrow("SELECT current_database() AS db, current_setting('server_version') AS version,"
                              " current_setting('server_version_num')::int / 10000 AS major")
    migrations: list[Migration] = []
    if await conn.fetchval("SELECT to_regclass('public.omnistock_migrations') IS NOT NULL"):
        migrations = [Migration(r["schema_name"], r["version"], r["checksum"]) for r in await conn.fetch(
            "SELECT schema_name, version, checksum FROM public.omnistock_migrations"
            " WHERE (schema_name, version) <> ($1, $2) ORDER BY schema_name, version", *GRANTS_MARK)]
    entries = tree_size = 0
    if await conn.fetchval("SELECT to_regclass('ledger.entries') IS NOT NULL"):
        entries = await conn.fetchval("SELECT count(*) FROM ledger.entries")
        tree_size = await conn.fetchval("SELECT coalesce(max(tree_size), 0) FROM ledger.checkpoints")
    return Snapshot(snapshot_id, row["db"], row["version"], row["major"], migrations, entries, tree_size)


async def server_major(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT current_setting('server_version_num')::int / 10000"))


async def own_objects(conn: Connection) -> dict[str, int]:
    """Schema -> relations in it, for every schema of the database that is not the server's own
    (an empty database has just `public`, holding nothing)."""
    return {r["schema"]: r["relations"] for r in await conn.fetch(_OWN_OBJECTS)}


async def clearing_statements(conn: Connection) -> list[str]:
    return [r["statement"] for r in await conn.fetch(_CLEARING)]


async def omnistock_sessions(conn: Connection, own_names: tuple[str, ...]) -> list[str]:
    """application_name of the other omnistock connections to this database (running services)."""
    return [r["application_name"] for r in await conn.fetch(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND application_name LIKE 'omnistock%'"
        " AND NOT application_name = ANY($1::text[]) ORDER BY 1", list(own_names))]


async def ledger_tree_size(conn: Connection) -> int:
    if not await conn.fetchval("SELECT to_regclass('ledger.checkpoints') IS NOT NULL"):
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(tree_size), 0) FROM ledger.checkpoints"))


async def analyze(conn: Connection) -> None:
    """Planner statistics: a restored database has none until autovacuum gets round to it."""
    await conn.execute("ANALYZE")
