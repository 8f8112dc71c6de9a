"""Migrations: applied once, in order, even when several processes start at the same moment."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.migrations import MigrationChanged, MigrationSet, apply_migrations
from tests.conftest import with_database


@pytest.fixture
async def empty_db(server_url: str) -> str:
    name = f"mig_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return with_database(server_url, name)


def write_set(tmp_path: Path) -> MigrationSet:
    (tmp_path / "0001_first.sql").write_text("CREATE SCHEMA demo; CREATE TABLE demo.t (n int);")
    (tmp_path / "0002_second.sql").write_text("INSERT INTO demo.t VALUES (1);")
    return MigrationSet("demo", tmp_path)


async def test_concurrent_starts_apply_each_file_once(empty_db: str, tmp_path: Path) -> None:
    migration_set = write_set(tmp_path)
    conns = [await asyncpg.connect(empty_db) for _ in range(6)]
    try:
        applied = await asyncio.gather(*[apply_migrations(c, [migration_set]) for c in conns])
        assert sorted(len(a) for a in applied) == [0, 0, 0, 0, 0, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM demo.t") == 1
    finally:
        for c in conns:
            await c.close()


async def test_an_edited_applied_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    migration_set = write_set(tmp_path)
    conn = await asyncpg.connect(empty_db)
    try:
        await apply_migrations(conn, [migration_set])
        (tmp_path / "0002_second.sql").write_text("INSERT INTO demo.t VALUES (2);")
        with pytest.raises(MigrationChanged):
            await apply_migrations(conn, [migration_set])
    finally:
        await conn.close()
