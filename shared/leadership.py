"""One process at a time among replicas does a job: the one holding a session advisory lock on a
connection of its own. The lock goes with the connection, so a process that dies (or loses its
connection) frees it, and another takes over at its next look.

Leadership saves work, it does not make the job safe: a job must still refuse to write over another's
(the projector's writes check its cursor's version), since a leader may lose its connection without
noticing until its next statement.
"""

from __future__ import annotations

import contextlib
import time

import asyncpg

from shared.logging import get_logger

log = get_logger("omnistock.leadership")

LOCK_CLASS = 7_277_009  # pg_try_advisory_lock(LOCK_CLASS, job key): fixed, every process agrees
# What a statement on a connection the server closed raises (asyncpg may report an InternalClientError).
CONNECTION_LOST = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)


class Leadership:
    def __init__(self, dsn: str, key: int, *, application_name: str, connect_timeout_s: float = 10.0,
                 recheck_s: float = 1.0) -> None:
        self._dsn, self._key = dsn, key
        self._application_name, self._connect_timeout_s = application_name, connect_timeout_s
        self._recheck_s = recheck_s
        self._conn: asyncpg.Connection | None = None
        self._leading = False
        self._checked_at = 0.0

    async def leading(self) -> bool:
        """Whether this process leads now, taking the lead if nobody holds it (False when the database
        cannot be reached: then nobody here should work). A leader's connection is checked at most every
        `recheck_s`: one that died unnoticed would otherwise keep it working beside its successor."""
        if self._leading and self._conn is not None and not self._conn.is_closed():
            if time.monotonic() - self._checked_at < self._recheck_s:
                return True
            try:
                await self._conn.fetchval("SELECT 1")  # the lock lives as long as this session
                self._checked_at = time.monotonic()
                return True
            except CONNECTION_LOST:
                await self.close()
        if self._conn is None or self._conn.is_closed():
            self._conn, self._leading = None, False
            try:
                self._conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s,
                                                   server_settings={"application_name": self._application_name})
            except (*CONNECTION_LOST, TimeoutError) as exc:
                log.warning("cannot reach the database to take the lead", job=self._application_name, error=repr(exc))
                return False
        if not self._leading:
            try:
                self._leading = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)",
                                                               LOCK_CLASS, self._key))
                self._checked_at = time.monotonic()
            except CONNECTION_LOST:
                await self.close()
                return False
        return self._leading

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn, self._leading = None, False
