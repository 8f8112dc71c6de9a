"""The one database helper: an asyncpg pool with our codecs, and the one way to open a transaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from shared.logging import get_logger

log = get_logger("omnistock.db")

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


async def _end_transaction_only(conn: Connection) -> None:
    """Release without the session reset: asyncpg has already rolled back what the user left open."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20,
                      command_timeout: float = 10.0, connect_timeout: float = 60.0,
                      application_name: str = "omnistock", session_state: bool = True,
                      init: Callable[[Connection], Awaitable[None]] = init_connection) -> Pool:
    """`session_state=False` for pools whose users work in transactions only (no session advisory lock,
    LISTEN, cursor or plain SET): asyncpg's release then skips its reset query (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL), one more round trip on every release, 8 % of the e-commerce process's CPU under
    the order load. It still rolls back a transaction left open. `init` prepares each new connection
    (our codecs; a caller's init must call init_connection too)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,  # asyncpg's name for the connection-establishment timeout
        init=init,
        server_settings={"application_name": application_name, "timezone": "UTC"},
        reset=None if session_state else _end_transaction_only,
    )
    assert pool is not None
    return pool


async def close_pool(pool: Pool, timeout_s: float = 10.0) -> None:
    """Close `pool`, waiting at most `timeout_s` for connections in use to come back, then terminating
    them: a connection left mid-operation (asyncpg's wait on a cancelled query or introspection has no
    bound) would otherwise hold the service's shutdown forever."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)  # a cancelled close() terminates the pool
    except TimeoutError:
        log.warning("connections not given back in time; the pool was terminated", timeout_s=timeout_s)
        pool.terminate()


@asynccontextmanager
async def transaction(pool: Pool, *, isolation: str = "read_committed") -> AsyncIterator[Connection]:
    """Acquire a connection and run one use case in one transaction (rolled back on any error)."""
    conn = await pool.acquire()
    try:
        async with conn.transaction(isolation=isolation):
            yield conn
    except asyncpg.exceptions.InternalClientError:
        conn.terminate()  # left mid-operation by a server that ended the session: never hand it out again
        raise
    finally:
        await release(pool, conn)


async def release(pool: Pool, conn: Connection) -> None:
    """Give `conn` back. If resetting it fails (the server closed it; asyncpg may then report an
    InternalClientError), the pool has already thrown it away, and what the transaction did stands:
    committed, or rolled back by the server. That is no failure of the request's."""
    try:
        await pool.release(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError) as exc:
        log.warning("a connection broke as it was given back; the pool dropped it", error=repr(exc))
