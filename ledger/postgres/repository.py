"""All SQL of the embedded ledger backend (schema `ledger`, see migrations/0001_ledger.sql)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from shared.db import Connection

# Every appender and checkpoint cutter of every process takes this transaction-level advisory lock
# first, so seqs are handed out one batch at a time with no gaps and checkpoints are cut in order.
APPEND_LOCK_KEY = 7_277_006
# Held (session level) by the one full audit running across every ledger process (service/audit_job.py).
AUDIT_LOCK_KEY = 7_277_008

Record = asyncpg.Record


async def lock_appenders(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK_KEY)


HEAD_SQL = """
SELECT (SELECT coalesce(max(seq) + 1, 0) FROM ledger.entries)             AS tree_size,
       (SELECT coalesce(max(id) + 1, 0) FROM ledger.batches)              AS next_batch_id,
       (SELECT signed_at FROM ledger.batches ORDER BY id DESC LIMIT 1)    AS batch_signed_at,
       cp.tree_size AS checkpoint_size, cp.signed_at AS checkpoint_signed_at
FROM (SELECT 1) one
LEFT JOIN LATERAL (SELECT tree_size, signed_at FROM ledger.checkpoints ORDER BY tree_size DESC LIMIT 1) cp ON true
"""


async def head(conn: Connection) -> Record:
    """The log's current size, next batch id, and its latest batch and checkpoint (index lookups only)."""
    row = await conn.fetchrow(HEAD_SQL)
    assert row is not None
    return row


async def fetch_nodes(conn: Connection | asyncpg.Pool, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    levels, indexes = [], []
    for level, index in keys:
        levels.append(level)
        indexes.append(index)
    if not levels:
        return {}
    rows = await conn.fetch(
        "SELECT n.level, n.idx, n.hash FROM unnest($1::smallint[], $2::bigint[]) AS k(level, idx)"
        " JOIN ledger.nodes n ON n.level = k.level AND n.idx = k.idx",
        levels, indexes,
    )
    return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}


async def leaf_hashes(conn: Connection, first: int, last: int) -> list[bytes]:
    rows = await conn.fetch(
        "SELECT hash FROM ledger.nodes WHERE level = 0 AND idx BETWEEN $1 AND $2 ORDER BY idx", first, last
    )
    return [bytes(r["hash"]) for r in rows]


async def insert_batch(conn: Connection, batch_id: int, batch: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO ledger.batches (id, org, first_seq, last_seq, signed_at, batch_root, cert_pem, signature,"
        " statement) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        batch_id, batch["org"], batch["first_seq"], batch["last_seq"], batch["timestamp"],
        bytes.fromhex(batch["batch_root"]), batch["cert_pem"], batch["signature"], batch["statement"],
    )


async def insert_entries(conn: Connection, rows: Sequence[tuple[int, int, str, bytes, bytes, str | None]]) -> None:
    """rows: (seq, batch_id, kind, canonical, leaf_hash, entry_key); COPY, so a large batch is one round trip."""
    await conn.copy_records_to_table(
        "entries", schema_name="ledger", columns=("seq", "batch_id", "kind", "canonical", "leaf_hash", "entry_key"),
        records=rows,
    )


async def entries_by_key(conn: Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """The stored entries with these (kind, entry_key)s."""
    rows = await conn.fetch(
        "SELECT e.kind, e.entry_key, e.seq, e.batch_id, e.canonical, e.leaf_hash FROM ledger.entries e"
        " JOIN unnest($1::text[], $2::text[]) AS k(kind, entry_key) USING (kind, entry_key)",
        [k for k, _ in keys], [key for _, key in keys],
    )
    return {(r["kind"], r["entry_key"]): r for r in rows}


async def insert_nodes(conn: Connection, rows: Sequence[tuple[int, int, bytes]]) -> None:
    await conn.copy_records_to_table("nodes", schema_name="ledger", columns=("level", "idx", "hash"), records=rows)


async def insert_checkpoint(conn: Connection, checkpoint: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO ledger.checkpoints (tree_size, root_hash, signed_at, signatures) VALUES ($1, $2, $3, $4)",
        checkpoint["tree_size"], bytes.fromhex(checkpoint["root_hash"]), checkpoint["timestamp"],
        checkpoint["signatures"],
    )


# A checkpoint's signatures: the ones stored with it (the ledger's; before co-signatures had a table of
# their own, finance's too), then its co-signatures in org order.
SIGNATURES = (
    "cp.signatures || coalesce((SELECT jsonb_agg(jsonb_build_object('org', c.org, 'cert_pem', c.cert_pem,"
    " 'signature', c.signature) ORDER BY c.org) FROM ledger.cosignatures c WHERE c.tree_size = cp.tree_size),"
    " '[]'::jsonb) AS signatures"
)
CHECKPOINT_COLUMNS = f"cp.tree_size, cp.root_hash, cp.signed_at, {SIGNATURES}"


async def latest_checkpoint(conn: Connection | asyncpg.Pool) -> Record | None:
    return await conn.fetchrow(
        f"SELECT {CHECKPOINT_COLUMNS} FROM ledger.checkpoints cp ORDER BY cp.tree_size DESC LIMIT 1"
    )


async def checkpoint_of_size(conn: Connection | asyncpg.Pool, tree_size: int) -> Record | None:
    return await conn.fetchrow(f"SELECT {CHECKPOINT_COLUMNS} FROM ledger.checkpoints cp WHERE cp.tree_size = $1",
                               tree_size)


async def latest_signed_by(conn: Connection | asyncpg.Pool, org: str) -> Record | None:
    """The latest checkpoint carrying a signature of `org`, stored with it or as a co-signature."""
    return await conn.fetchrow(
        f"SELECT {CHECKPOINT_COLUMNS} FROM ledger.checkpoints cp"
        " WHERE EXISTS (SELECT 1 FROM ledger.cosignatures c WHERE c.tree_size = cp.tree_size AND c.org = $1)"
        "    OR cp.signatures @> jsonb_build_array(jsonb_build_object('org', $1::text))"
        " ORDER BY cp.tree_size DESC LIMIT 1",
        org,
    )


async def insert_cosignature(conn: Connection | asyncpg.Pool, tree_size: int, signature: dict[str, str]) -> bool:
    """False if the org had co-signed this checkpoint already (the first co-signature stands)."""
    done = await conn.execute(
        "INSERT INTO ledger.cosignatures (tree_size, org, cert_pem, signature) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (tree_size, org) DO NOTHING",
        tree_size, signature["org"], signature["cert_pem"], signature["signature"],
    )
    return bool(done.endswith(" 1"))


async def all_checkpoints(conn: Connection) -> list[Record]:
    return await conn.fetch(f"SELECT {CHECKPOINT_COLUMNS} FROM ledger.checkpoints cp ORDER BY cp.tree_size")


async def find_seqs(conn: Connection | asyncpg.Pool, entry_key: str | None, sale_key_prefix: str | None,
                    limit: int) -> list[Record]:
    """Entries by exact entry_key (the unique index), or reconciled sales whose key starts with a prefix."""
    return await conn.fetch(
        "SELECT seq, kind FROM ledger.entries"
        " WHERE entry_key IS NOT NULL AND (($1::text IS NOT NULL AND entry_key = $1)"
        "   OR ($2::text IS NOT NULL AND kind = 'reconciled_sale' AND starts_with(entry_key, $2)))"
        " ORDER BY seq LIMIT $3", entry_key, sale_key_prefix, limit)


async def entry_with_checkpoint(conn: Connection | asyncpg.Pool, seq: int) -> Record | None:
    """One entry and the latest checkpoint, in one round trip (the hot read of GET /entries/{seq})."""
    return await conn.fetchrow(
        "SELECT e.seq, e.canonical, e.leaf_hash, l.tree_size, l.root_hash, l.signed_at, l.signatures"
        " FROM ledger.entries e"
        f" LEFT JOIN LATERAL (SELECT {CHECKPOINT_COLUMNS} FROM ledger.checkpoints cp"
        "                    ORDER BY cp.tree_size DESC LIMIT 1) l ON true"
        " WHERE e.seq = $1",
        seq,
    )


async def entries_between(conn: Connection, first: int, last: int) -> list[Record]:
    return await conn.fetch(
        "SELECT seq, batch_id, kind, canonical, leaf_hash FROM ledger.entries"
        " WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
        first, last,
    )


BATCH_COLUMNS = "id, org, first_seq, last_seq, signed_at, batch_root, cert_pem, signature, statement"


async def batches_overlapping(conn: Connection, first: int, last: int) -> list[Record]:
    return await conn.fetch(
        f"SELECT {BATCH_COLUMNS} FROM ledger.batches"
        " WHERE first_seq <= $2 AND last_seq >= $1 ORDER BY first_seq",
        first, last,
    )


async def all_batches(conn: Connection) -> list[Record]:
    return await conn.fetch(
        f"SELECT {BATCH_COLUMNS} FROM ledger.batches"
        " ORDER BY first_seq, id"
    )


async def node_runs(conn: Connection, start: int, end: int, top_level: int) -> dict[int, bytes]:
    """Per level 0..top_level, the stored hashes of the nodes inside leaves [start, end), concatenated
    in index order: the audit compares a whole level of a chunk in one bytes comparison."""
    rows = await conn.fetch(
        "SELECT l AS level, (SELECT coalesce(string_agg(n.hash, ''::bytea ORDER BY n.idx), ''::bytea)"
        "                    FROM ledger.nodes n"
        "                    WHERE n.level = l AND n.idx >= ($1::bigint >> l) AND n.idx < ($2::bigint >> l)) AS hashes"
        " FROM generate_series(0, $3::int) AS l",
        start, end, top_level,
    )
    return {r["level"]: bytes(r["hashes"]) for r in rows}


async def nodes_above(conn: Connection, level: int) -> dict[tuple[int, int], bytes]:
    rows = await conn.fetch("SELECT level, idx, hash FROM ledger.nodes WHERE level > $1", level)
    return {(r["level"], r["idx"]): bytes(r["hash"]) for r in rows}


async def entry_chunk(conn: Connection, start: int, end: int) -> list[Record]:
    return await conn.fetch(
        "SELECT seq, batch_id, kind, canonical, leaf_hash FROM ledger.entries"
        " WHERE seq >= $1 AND seq < $2 ORDER BY seq",
        start, end,
    )


async def entry_count_and_end(conn: Connection) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT count(*) AS n, coalesce(max(seq) + 1, 0) AS end_seq FROM ledger.entries")
    assert row is not None
    return row["n"], row["end_seq"]


async def try_lock_audit(conn: Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", AUDIT_LOCK_KEY))


async def lock_audit(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_lock($1)", AUDIT_LOCK_KEY)


async def unlock_audit(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", AUDIT_LOCK_KEY)
