"""Tampering behind the ledger's back, directly in the database with the triggers bypassed (as a
superuser with session_replication_role = replica): the audit fails and names the first bad seq."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.identity import load_identity
from ledger.postgres.backend import PostgresLedger
from shared.settings import Settings
from tests.ledger.conftest import append, ledger_port, sale, summary

BATCH = 10


@pytest.fixture
async def pg_ledger(ledger_settings: Settings) -> AsyncIterator[PostgresLedger]:
    """30 entries in three signed batches (0..9, 10..19, 20..29), a checkpoint after each."""
    async with ledger_port(ledger_settings, 4) as backend:
        finance = load_identity(ledger_settings.data_dir, "finance")
        for b in range(3):
            await append(backend, [summary()] + [sale(b * BATCH + i) for i in range(1, BATCH)], finance)
            await backend.cut_checkpoint()
        report = await backend.audit()
        assert report.ok, report.summary()
        yield backend


async def behind_the_back(pool: asyncpg.Pool, *statements: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # triggers off
        for statement in statements:
            await conn.execute(statement)


async def first_bad(ledger: PostgresLedger) -> int | None:
    report = await ledger.audit()
    assert not report.ok
    return report.first_bad_seq


CHANGE_PAYLOAD_13 = ("UPDATE ledger.entries SET canonical = convert_to(replace(convert_from(canonical, 'UTF8'),"
                     " '\"10.00\"', '\"1.00\"'), 'UTF8') WHERE seq = 13")


async def test_a_changed_payload_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, CHANGE_PAYLOAD_13)
    assert await first_bad(pg_ledger) == 13


async def test_a_changed_payload_with_its_leaf_hash_rewritten_is_named(pool: asyncpg.Pool,
                                                                       pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, CHANGE_PAYLOAD_13,
                          "UPDATE ledger.entries SET leaf_hash = sha256('\\x00'::bytea || canonical) WHERE seq = 13")
    assert await first_bad(pg_ledger) == 13


async def test_a_forger_who_also_rewrites_the_tree_nodes_is_caught_by_the_batch_signature(
        pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(
        pool, CHANGE_PAYLOAD_13,
        "UPDATE ledger.entries SET leaf_hash = sha256('\\x00'::bytea || canonical) WHERE seq = 13",
        "UPDATE ledger.nodes n SET hash = e.leaf_hash FROM ledger.entries e WHERE n.level = 0 AND n.idx = 13"
        " AND e.seq = 13",
    )
    report = await pg_ledger.audit()
    assert not report.ok
    messages = " ".join(f.message for f in report.failures)
    assert "batch 10..19: entries no longer hash to the root its submitter signed" in messages
    # The stored level-1 node over seqs 12..13 no longer matches: located to that pair, within the batch.
    assert report.first_bad_seq == 12
    assert any(f.seq == 12 and "level 1" in f.message for f in report.failures)


async def test_a_deleted_row_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, "DELETE FROM ledger.entries WHERE seq = 7")
    report = await pg_ledger.audit()
    assert report.first_bad_seq == 7
    assert "entry is missing" in report.failures[0].message


async def test_a_row_deleted_from_the_end_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, "DELETE FROM ledger.entries WHERE seq = 29")
    assert await first_bad(pg_ledger) == 29


async def test_two_swapped_rows_are_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(
        pool,
        "UPDATE ledger.entries SET seq = 1000 WHERE seq = 5",
        "UPDATE ledger.entries SET seq = 5 WHERE seq = 8",
        "UPDATE ledger.entries SET seq = 8 WHERE seq = 1000",
    )
    report = await pg_ledger.audit()
    assert report.first_bad_seq == 5
    assert {f.seq for f in report.failures if "leaf node" in f.message or "level 0" in f.message} == {5, 8}


async def test_swapped_payloads_are_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(
        pool,
        "UPDATE ledger.entries e SET canonical = o.canonical, leaf_hash = o.leaf_hash FROM ledger.entries o"
        " WHERE (e.seq, o.seq) IN ((21, 24), (24, 21))",
    )
    assert await first_bad(pg_ledger) == 21


async def test_an_inserted_row_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    forged = "convert_to('{\"kind\":\"reconciled_sale\",\"sales_total\":\"5.00\"}', 'UTF8')"
    await behind_the_back(
        pool,
        "UPDATE ledger.entries SET seq = seq + 1000 WHERE seq >= 20",
        "UPDATE ledger.entries SET seq = seq - 999 WHERE seq >= 1000",
        f"INSERT INTO ledger.entries SELECT 20, 2, 'reconciled_sale', {forged},"
        f" sha256('\\x00'::bytea || {forged})",
    )
    assert await first_bad(pg_ledger) == 20


async def test_a_row_appended_without_a_batch_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    forged = "convert_to('{\"kind\":\"reconciled_sale\"}', 'UTF8')"
    await behind_the_back(pool, f"INSERT INTO ledger.entries SELECT 30, 2, 'reconciled_sale', {forged},"
                                f" sha256('\\x00'::bytea || {forged})")
    assert await first_bad(pg_ledger) == 30


async def test_a_relabelled_kind_is_named(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    # ops may read summaries: relabelling a sale would leak it to them
    await behind_the_back(pool, "UPDATE ledger.entries SET kind = 'reconciliation_summary' WHERE seq = 3")
    assert await first_bad(pg_ledger) == 3


async def test_a_forged_checkpoint_signature_fails_the_audit(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, "UPDATE ledger.checkpoints SET root_hash = sha256('x') WHERE tree_size = 20")
    report = await pg_ledger.audit()
    assert not report.ok
    assert any("checkpoint of size 20" in f.message for f in report.failures)


async def test_a_forged_batch_signer_fails_the_audit(pool: asyncpg.Pool, pg_ledger: PostgresLedger) -> None:
    await behind_the_back(pool, "UPDATE ledger.batches SET org = 'ops' WHERE id = 1")
    assert await first_bad(pg_ledger) == 10
