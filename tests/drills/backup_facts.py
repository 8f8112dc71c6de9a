"""What a restore must bring back, read from a database: the facts named one by one, and a digest of
every row of every table, so that nothing unnamed can differ either."""

from __future__ import annotations

from typing import Any

import asyncpg

from shared.roles import quote_ident

# The migrations table records when grants were last applied: a restore re-applies them.
_UNCOMPARED = {("public", "omnistock_migrations")}


async def database_facts(url: str) -> dict[str, list[tuple[Any, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        queries = {
            "orders": "SELECT id, status, total, channel FROM orders.orders ORDER BY id",
            "stock": "SELECT sku, location_id, on_hand, reserved, safety_stock FROM inventory.stock_levels"
                     " ORDER BY sku, location_id",
            "ledger entries": "SELECT seq, batch_id, kind, canonical, leaf_hash FROM ledger.entries ORDER BY seq",
            "ledger batches": "SELECT id, org, first_seq, last_seq, signature FROM ledger.batches ORDER BY id",
            "checkpoints": "SELECT tree_size, root_hash, signed_at, signatures::text FROM ledger.checkpoints"
                           " ORDER BY tree_size",
            "api keys": "SELECT id, role, location_id FROM core.api_keys ORDER BY id",
        }
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in queries.items()}
    finally:
        await conn.close()


async def table_digests(url: str) -> dict[str, tuple[int, str]]:
    """schema.table -> (rows, md5 of the rows' text in order) for every table outside the catalogs."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            " ORDER BY 1, 2")
        out = {}
        for t in tables:
            if (t["schemaname"], t["tablename"]) in _UNCOMPARED:
                continue
            name = f"{quote_ident(t['schemaname'])}.{quote_ident(t['tablename'])}"
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) AS digest"
                f" FROM {name} x")
            out[f"{t['schemaname']}.{t['tablename']}"] = (row["n"], row["digest"])
        return out
    finally:
        await conn.close()
