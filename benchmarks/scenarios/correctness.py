"""What must be true after an order load, checked against the database: no acknowledged order lost,
no unit oversold, every stock level equal to its movements, reserved equal to what orders hold open
(the drills' checks, benchmarks/drills/checks.py, over every level of the run's database).

The figures land in each record's `extra["correctness"]`; any of them but the count of acknowledged
orders other than 0 fails the run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from benchmarks.drills.checks import stock_findings


async def _check(dsn: str, acknowledged: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        ids = sorted(set(acknowledged))
        found = await conn.fetchval("SELECT count(*) FROM orders.orders WHERE id = ANY($1::uuid[])", ids)
        findings = await stock_findings(conn)
    finally:
        await conn.close()
    return {"acknowledged_orders": len(ids), "lost_orders": len(ids) - int(found),
            **{kind: len(rows) for kind, rows in findings.items()}}


def check_orders(dsn: str, acknowledged: list[str]) -> dict[str, int]:
    """`acknowledged`: the ids of every order answered 201 (LoadSpec.collect_ids)."""
    return asyncio.run(_check(dsn, acknowledged))


def broken(correctness: dict[str, Any]) -> list[str]:
    """The checks that failed."""
    return [f"{name} = {value}" for name, value in correctness.items() if name != "acknowledged_orders" and value]
