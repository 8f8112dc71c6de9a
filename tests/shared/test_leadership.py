"""One leader among replicas: the holder of a session advisory lock, freed when its connection goes."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.leadership import Leadership


async def test_one_leads_and_another_takes_over_when_its_connection_goes(database_url: str,
                                                                         pool: asyncpg.Pool) -> None:
    first = Leadership(database_url, 41, application_name="lead-test-a", recheck_s=0.0)
    second = Leadership(database_url, 41, application_name="lead-test-b")
    other_job = Leadership(database_url, 42, application_name="lead-test-c")
    try:
        assert await first.leading()
        assert not await second.leading()
        assert await first.leading()  # still, without asking the database again
        assert await other_job.leading()  # another job's lead is its own
        # The leader's process dies: its backend ends, and the lock with it.
        pid = await pool.fetchval("SELECT pid FROM pg_stat_activity WHERE application_name = 'lead-test-a'")
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        for _ in range(100):
            if await second.leading():
                break
            await asyncio.sleep(0.02)
        assert await second.leading()
        assert not await first.leading()  # it reconnects and finds the lead taken
        await second.close()
        assert await first.leading()
    finally:
        for lead in (first, second, other_job):
            await lead.close()


async def test_an_unreachable_database_means_nobody_here_leads() -> None:
    lead = Leadership("postgresql://nobody:x@127.0.0.1:1/none", 41, application_name="lead-test",
                      connect_timeout_s=1.0)
    assert not await lead.leading()
