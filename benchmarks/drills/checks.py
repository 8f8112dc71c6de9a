"""What a drill checks afterwards, against the services' APIs and straight against the tables.

Each check returns a list of problems (empty = the promise held) so a drill can report all of them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks.drills.traffic import Ack
from services.ecommerce import projection
from services.inventory.repository import level_sums_mismatch
from services.orders.repository import reservation_drift
from shared.db import create_pool

# Oversell: more units allocated to orders at a level than were ever received there, or a level
# outside 0 <= reserved <= on_hand (the schema forbids it; checked anyway, it is the whole point).
OVERSOLD = """
WITH received AS (SELECT sku, location_id, sum(on_hand_delta) AS units FROM inventory.stock_movements
                  WHERE kind = 'receipt' GROUP BY 1, 2),
     allocated AS (SELECT ol.sku, a.location_id, sum(a.qty) AS units
                   FROM orders.allocations a JOIN orders.order_lines ol USING (order_id, line_no) GROUP BY 1, 2)
SELECT l.sku, l.location_id, l.on_hand, l.reserved, coalesce(r.units, 0) AS received,
       coalesce(a.units, 0) AS allocated
FROM inventory.stock_levels l
LEFT JOIN received r USING (sku, location_id)
LEFT JOIN allocated a USING (sku, location_id)
WHERE coalesce(a.units, 0) > coalesce(r.units, 0) OR l.reserved < 0 OR l.reserved > l.on_hand OR l.on_hand < 0
"""


Exists = Callable[[aiohttp.ClientSession, Ack], Awaitable[str | None]]  # a problem, or None when it exists


async def stock_findings(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """Levels breaking a stock promise, by promise (every list must be empty)."""
    return {
        "levels_off_movements": await level_sums_mismatch(conn),
        "reserved_off_open_orders": await reservation_drift(conn),
        "oversold_levels": await conn.fetch(OVERSOLD),
    }


PROBLEM = {"levels_off_movements": "level differs from its movements",
           "reserved_off_open_orders": "reserved differs from open allocations", "oversold_levels": "oversold"}


async def check_stock(dsn: str) -> tuple[list[str], dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        findings = await stock_findings(conn)
        problems = [f"{PROBLEM[kind]}: {dict(r)}" for kind, rows in findings.items() for r in rows]
        figures = dict(await conn.fetchrow(
            "SELECT (SELECT count(*) FROM orders.orders) AS orders_in_db,"
            " (SELECT coalesce(sum(reserved), 0) FROM inventory.stock_levels) AS units_reserved,"
            " (SELECT coalesce(sum(on_hand), 0) FROM inventory.stock_levels) AS units_on_hand"))
    finally:
        await conn.close()
    return problems, figures


async def check_projection(dsn: str, catch_up_s: float = 60.0) -> tuple[list[str], dict[str, Any]]:
    """Once the e-commerce projection has caught up, it equals a from-scratch computation (kill -9 in the
    middle of a batch must neither apply it twice nor skip it)."""
    pool = await create_pool(dsn, min_size=1, max_size=1)
    started = time.monotonic()
    try:
        while (drift := await projection.check(pool)) and not drift.none:
            if time.monotonic() - started > catch_up_s:
                return [f"availability projection still off a from-scratch computation after {catch_up_s:.0f}s:"
                        f" {drift.levels} levels, {drift.locations} locations, {drift.availability[:5]}"], {}
            await asyncio.sleep(0.5)
    finally:
        await pool.close()
    return [], {"availability projection": f"agrees with a from-scratch computation "
                                           f"(caught up in {time.monotonic() - started:.1f}s)"}


async def check_acks(base_url: str, api_key: str, path: str, acks: list[Ack], exists: Exists,
                     concurrency: int = 16) -> list[str]:
    """Every acknowledged write exists, and replaying its Idempotency-Key with its body returns it again."""
    problems: list[str] = []
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(base_url, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(ack: Ack) -> None:
            async with gate:
                if (missing := await exists(session, ack)) is not None:
                    problems.append(missing)
                async with session.post(path, data=ack.body, headers={"Idempotency-Key": ack.key}) as response:
                    payload = await response.json(content_type=None)
                    if response.status != 201:
                        problems.append(f"replay of {ack.key}: {response.status} {payload}")
                    elif (again := _result_id(payload)) != ack.result_id:
                        problems.append(f"replay of {ack.key} returned {again}, first answer was {ack.result_id}")

        await asyncio.gather(*(one(ack) for ack in acks))
    return problems


def _result_id(payload: Any) -> str:
    if "receipts" in payload:
        return ",".join(str(r["seq"]) for r in payload["receipts"])
    return str(payload["id"])


async def order_exists(session: aiohttp.ClientSession, ack: Ack) -> str | None:
    async with session.get(f"/v1/orders/{ack.result_id}") as response:
        order = await response.json(content_type=None)
    if response.status != 200:
        return f"acknowledged order {ack.result_id} (key {ack.key}): GET answered {response.status}"
    sent = {line["sku"]: line["qty"] for line in orjson.loads(ack.body)["lines"]}
    stored = {line["sku"]: line["qty"] for line in order["lines"]}
    allocated: dict[str, int] = {}
    for allocation in order["allocations"]:
        allocated[allocation["sku"]] = allocated.get(allocation["sku"], 0) + allocation["qty"]
    if stored != sent or allocated != sent:
        return f"order {ack.result_id}: sent {sent}, stored {stored}, allocated {allocated}"
    return None


async def ledger_entry_exists(session: aiohttp.ClientSession, ack: Ack) -> str | None:
    for seq in ack.result_id.split(","):
        async with session.get(f"/v1/ledger/entries/{seq}") as response:
            await response.read()
            if response.status != 200:
                return f"acknowledged ledger entry {seq} (key {ack.key}): GET answered {response.status}"
    return None


async def replay_in_doubt(base_url: str, api_key: str, path: str, in_doubt: Iterable[tuple[str, bytes]],
                          concurrency: int = 16) -> tuple[list[str], dict[str, int]]:
    """Requests that got no answer, retried as a client would: each must now get a definite answer."""
    problems: list[str] = []
    statuses: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(base_url, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(key: str, body: bytes) -> None:
            async with gate, session.post(path, data=body, headers={"Idempotency-Key": key}) as response:
                payload = await response.json(content_type=None)
                statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
                if response.status not in (201, 409):
                    problems.append(f"retry of in-doubt {key}: {response.status} {payload}")

        await asyncio.gather(*(one(key, body) for key, body in in_doubt))
    return problems, statuses


def ledger_audit(env: dict[str, str]) -> tuple[bool, str]:
    """`omnistock ledger audit`: the stored log re-checked against its signed checkpoints."""
    done = subprocess.run([sys.executable, "-m", "services.cli", "ledger", "audit"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def unhandled_errors(log_dir: Path, per_service: int = 3) -> dict[str, list[str]]:
    """The last tracebacks each service logged as 'unhandled error' (what became a 500), by service,
    so a failed drill names its cause after its temp dir is gone."""
    found: dict[str, list[str]] = {}
    for log in sorted(log_dir.glob("*.log")):
        errors = []
        for line in log.read_bytes().splitlines():
            if b'"unhandled error"' not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            errors.append(f"{entry.get('method', '')} {entry.get('path', '')}: {entry.get('exception', '')[-1500:]}")
        if errors:
            found[log.stem] = errors[-per_service:]
    return found
