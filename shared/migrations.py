"""Ordered SQL migrations per schema, recorded in a table, applied at start-up.

Several processes may start at once (`omnistock up`, replicas, test workers); a session-level advisory
lock makes exactly one of them apply pending files while the others wait and then find nothing to do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shared.db import Connection

MIGRATION_LOCK_KEY = 7_277_001  # arbitrary, fixed: every omnistock process agrees on it

LEDGER_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.omnistock_migrations (
    schema_name text NOT NULL,
    version     text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, version)
)
"""


@dataclass(frozen=True)
class MigrationSet:
    """The migration files of one schema: `NNNN_name.sql`, applied in name order."""

    schema: str
    directory: Path

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.sql") if p.is_file())


class MigrationChanged(RuntimeError):
    """An applied migration file was edited afterwards: refuse to run against a drifted schema."""


async def apply_migrations(conn: Connection, sets: list[MigrationSet]) -> list[str]:
    """Apply every pending file of `sets`, in order; return the ones applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(LEDGER_TABLE_SQL)
        for migration_set in sets:
            done = {
                row["version"]: row["checksum"]
                for row in await conn.fetch(
                    "SELECT version, checksum FROM public.omnistock_migrations WHERE schema_name = $1",
                    migration_set.schema,
                )
            }
            for path in migration_set.files():
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if path.name in done:
                    if done[path.name] != checksum:
                        raise MigrationChanged(f"{migration_set.schema}/{path.name} changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO public.omnistock_migrations (schema_name, version, checksum)"
                        " VALUES ($1, $2, $3)",
                        migration_set.schema, path.name, checksum,
                    )
                applied.append(f"{migration_set.schema}/{path.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied


CORE_MIGRATIONS = MigrationSet("core", Path(__file__).parent / "migrations")
