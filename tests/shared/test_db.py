"""The one db helper: giving back a connection the server has closed is no failure of the work."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db import close_pool, create_pool, release, transaction
from tests.polling import eventually


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


async def test_a_transaction_only_pool_still_rolls_back_what_a_user_left_open(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1, session_state=False)
    try:
        conn = await pool.acquire()
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS left_open (n int) ON COMMIT PRESERVE ROWS")
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO left_open VALUES (1)")
        await release(pool, conn)  # given back mid-transaction (a cancelled request)
        async with transaction(pool) as again:
            assert again is not None and await again.fetchval("SELECT count(*) FROM left_open") == 0
    finally:
        await pool.close()


@pytest.mark.parametrize("session_state", [True, False])
async def test_only_a_session_state_pool_resets_the_session_on_release(database_url: str,
                                                                      session_state: bool) -> None:
    """Why finance declares session_state: its ledger commit holds a session advisory lock on a pooled
    connection, and only the session reset frees it should the unlock never run."""
    pool = await create_pool(database_url, min_size=1, max_size=1, session_state=session_state)
    other = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
        assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is session_state
    finally:
        await other.close()
        await pool.close()


async def test_closing_a_pool_whose_connection_never_comes_back_ends_in_time(database_url: str) -> None:
    """A connection still out (a request stuck mid-operation) cannot hold the service's shutdown forever."""
    pool = await create_pool(database_url, min_size=1, max_size=1, application_name="omnistock-close-test")
    held = await pool.acquire()  # never released
    started = asyncio.get_running_loop().time()
    await close_pool(pool, timeout_s=0.5)
    assert asyncio.get_running_loop().time() - started < 5
    observer = await asyncpg.connect(database_url)
    try:
        async def gone() -> bool:  # terminated, not left open to the server
            return not await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'omnistock-close-test'")

        await eventually(gone, within_s=5)
    finally:
        await observer.close()
    del held  # it was out the whole time
