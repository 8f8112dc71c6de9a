"""The one database helper: an asyncpg pool with our codecs, and the one way to open a transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

Connection = asyncpg.Connection
Pool = asyncpg.Pool


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value: Any) -> Any:
    # Money travels as decimal strings; a Decimal reaching JSON means "keep it exact".
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


async def init_connection(conn: Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                      command_timeout: float = 10.0, connect_timeout: float = 60.0,
                      application_name: str = "omnistock") -> Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,  # asyncpg's name for the connection-establishment timeout
        init=init_connection,
        server_settings={"application_name": application_name, "timezone": "UTC"},
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def transaction(pool: Pool, *, isolation: str = "read_committed") -> AsyncIterator[Connection]:
    """Acquire a connection and run one use case in one transaction (rolled back on any error)."""
    async with pool.acquire() as conn, conn.transaction(isolation=isolation):
        yield conn
