"""Append-only in the database, twice: the service's own connections cannot change a row (grants),
and nobody can without first switching the triggers off (session_replication_role)."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.identity import load_identity
from ledger.service.use_cases import create_ledger_pool
from shared.settings import Settings
from tests.ledger.conftest import append, cosign, ledger_port, sale

CHANGES = [
    "UPDATE ledger.entries SET kind = 'reconciliation_summary'",
    "DELETE FROM ledger.entries",
    "TRUNCATE ledger.entries CASCADE",
    "UPDATE ledger.nodes SET hash = sha256('x')",
    "DELETE FROM ledger.batches",
    "UPDATE ledger.checkpoints SET tree_size = 0",
    "DELETE FROM ledger.checkpoints",
    "TRUNCATE ledger.checkpoints CASCADE",
    "UPDATE ledger.cosignatures SET org = 'audit'",
    "DELETE FROM ledger.cosignatures",
    "TRUNCATE ledger.cosignatures",
    "UPDATE ledger.batches SET statement = 'batch'",
]


@pytest.fixture
async def filled(ledger_settings: Settings) -> Settings:
    async with ledger_port(ledger_settings, 2) as backend:
        finance = load_identity(ledger_settings.data_dir, "finance")
        await append(backend, [sale(i) for i in range(5)], finance)
        await backend.cut_checkpoint()
        await cosign(backend, finance, ledger_settings)
    return ledger_settings


@pytest.mark.parametrize("statement", CHANGES)
async def test_the_service_role_cannot_change_or_remove_rows(filled: Settings, statement: str) -> None:
    pool = await create_ledger_pool(filled, max_size=1)
    try:
        for _ in range(2):  # also after the pool reset a released connection (RESET ALL keeps the role)
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == "omnistock_ledger"
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                    await conn.execute(statement)
    finally:
        await pool.close()


async def test_the_service_role_reads_and_appends_only_the_ledger(filled: Settings) -> None:
    pool = await create_ledger_pool(filled, max_size=1)
    try:
        assert await pool.fetchval("SELECT count(*) FROM ledger.entries") == 5
        # It reads API keys (the ledger service authenticates its requests as this role), never writes them.
        assert await pool.fetchval("SELECT count(*) FROM core.api_keys") >= 0  # no permission error
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("INSERT INTO core.api_keys (key_hash, role) VALUES ('\\x00', 'admin')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("UPDATE core.api_keys SET revoked_at = NULL")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.fetchval("SELECT count(*) FROM orders.orders")
    finally:
        await pool.close()


@pytest.mark.parametrize("statement", CHANGES)
async def test_even_the_owner_is_stopped_by_the_triggers(filled: Settings, pool: asyncpg.Pool,
                                                         statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)
    assert await pool.fetchval("SELECT count(*) FROM ledger.entries") == 5
