"""The one db helper: giving back a connection the server has closed is no failure of the work."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import release, transaction


async def test_a_connection_the_server_closed_is_given_back_quietly(pool: asyncpg.Pool) -> None:
    conn = await pool.acquire()
    pid = conn.get_server_pid()
    assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    for _ in range(50):  # until the server has really closed it
        if not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            break
        await asyncio.sleep(0.02)
    await release(pool, conn)  # the reset fails underneath; nothing is raised
    async with transaction(pool) as fresh:  # and the pool goes on with a healthy connection
        assert await fresh.fetchval("SELECT 1") == 1


async def test_a_connection_asyncpg_reports_broken_is_not_handed_out_again(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.exceptions.InternalClientError):
        async with transaction(pool) as conn:
            pid = conn.get_server_pid()
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is"
                                                         " in progress")
    for _ in range(50):  # the connection was closed, so its server process ends
        if not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the broken connection is still open")
    async with transaction(pool) as fresh:
        assert fresh.get_server_pid() != pid and await fresh.fetchval("SELECT 1") == 1
