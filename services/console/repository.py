"""The console's SQL: users (read; the owner's CLI writes them), sessions and failed sign-ins."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.db import Connection

USER_COLUMNS = "id, username, display_name, role, location_id, password_hash, created_at, disabled_at"


async def user_by_name(db: Connection, username: str) -> asyncpg.Record | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS} FROM console.users WHERE username = $1", username)


async def list_users(db: Connection) -> list[asyncpg.Record]:
    return await db.fetch(f"SELECT {USER_COLUMNS} FROM console.users ORDER BY username")


async def insert_user(db: Connection, username: str, display_name: str, role: str, location_id: str | None,
                      password_hash: str) -> asyncpg.Record:
    return await db.fetchrow(
        "INSERT INTO console.users (username, display_name, role, location_id, password_hash)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}",
        username, display_name, role, location_id, password_hash)


async def location_exists(db: Connection, location_id: str) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM inventory.locations WHERE id = $1)", location_id))


async def set_password(db: Connection, username: str, password_hash: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"UPDATE console.users SET password_hash = $2 WHERE username = $1 RETURNING {USER_COLUMNS}",
        username, password_hash)


async def disable_user(db: Connection, username: str) -> asyncpg.Record | None:
    """Disable, end every open session and revoke every key of the person, in one transaction."""
    async with db.transaction():
        row = await db.fetchrow(
            "UPDATE console.users SET disabled_at = coalesce(disabled_at, now()) WHERE username = $1"
            f" RETURNING {USER_COLUMNS}", username)
        if row is None:
            return None
        await db.execute("UPDATE console.sessions SET ended_at = now(), end_reason = 'disabled'"
                         " WHERE user_id = $1 AND ended_at IS NULL", row["id"])
        await db.execute("UPDATE core.api_keys SET revoked_at = now() WHERE person = $1 AND revoked_at IS NULL",
                         row["username"])
        return row


async def enable_user(db: Connection, username: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        f"UPDATE console.users SET disabled_at = NULL WHERE username = $1 RETURNING {USER_COLUMNS}", username)


# --- sessions ------------------------------------------------------------------------------------


NO_ENABLED_USER = "OS010"  # console.issue_person_key's refusal (its migration)


async def issue_person_key(db: Connection, user_id: int, key_hash: bytes, expires_at: datetime) -> int:
    return int(await db.fetchval("SELECT console.issue_person_key($1, $2, $3)", user_id, key_hash, expires_at))


async def revoke_person_key(db: Connection, key_id: int) -> None:
    await db.execute("SELECT console.revoke_person_key($1)", key_id)


async def insert_session(db: Connection, token_hash: bytes, user_id: int, api_key_id: int, sealed_key: bytes,
                         csrf_token: str, expires_at: datetime) -> None:
    await db.execute(
        "INSERT INTO console.sessions (token_hash, user_id, api_key_id, sealed_key, csrf_token, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)", token_hash, user_id, api_key_id, sealed_key, csrf_token, expires_at)


SESSION_LOOKUP = """
SELECT s.token_hash, s.api_key_id, s.sealed_key, s.csrf_token, s.created_at, s.last_seen_at, s.expires_at,
       u.id AS user_id, u.username, u.display_name, u.role, u.location_id, u.disabled_at, now() AS now
FROM console.sessions s JOIN console.users u ON u.id = s.user_id
WHERE s.token_hash = $1 AND s.ended_at IS NULL
"""


async def open_session(db: Connection, token_hash: bytes) -> asyncpg.Record | None:
    return await db.fetchrow(SESSION_LOOKUP, token_hash)


async def touch_session(db: Connection, token_hash: bytes) -> None:
    await db.execute("UPDATE console.sessions SET last_seen_at = now() WHERE token_hash = $1", token_hash)


async def end_session(db: Connection, token_hash: bytes, reason: str) -> int | None:
    """End an open session; its API key id, or None when it had ended already."""
    return await db.fetchval(
        "UPDATE console.sessions SET ended_at = now(), end_reason = $2 WHERE token_hash = $1 AND ended_at IS NULL"
        " RETURNING api_key_id", token_hash, reason)


async def sessions_past(db: Connection, idle_s: float, limit: int) -> list[asyncpg.Record]:
    """Open sessions past their absolute expiry or idle for `idle_s` (the sweeper ends them)."""
    return await db.fetch(
        "SELECT token_hash, CASE WHEN expires_at <= now() THEN 'expired' ELSE 'idle' END AS reason"
        " FROM console.sessions WHERE ended_at IS NULL"
        " AND (expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1)) LIMIT $2", idle_s, limit)


async def delete_ended_sessions(db: Connection, older_than_s: float, limit: int) -> int:
    result = await db.execute(
        "DELETE FROM console.sessions WHERE token_hash IN (SELECT token_hash FROM console.sessions"
        " WHERE ended_at < now() - make_interval(secs => $1) LIMIT $2)", older_than_s, limit)
    return int(result.split()[-1])


# --- failed sign-ins -----------------------------------------------------------------------------


async def record_failure(db: Connection, username: str, client: str) -> None:
    await db.execute("INSERT INTO console.sign_in_failures (username, client) VALUES ($1, $2)", username, client)


async def recent_failures(db: Connection, username: str, client: str, window_s: float) -> int:
    """Failures for this user name or from this client inside the window, whichever is more."""
    return int(await db.fetchval(RECENT_FAILURES, username, client, window_s))


RECENT_FAILURES = """
SELECT greatest(
    (SELECT count(*) FROM console.sign_in_failures WHERE username = $1 AND at > now() - make_interval(secs => $3)),
    (SELECT count(*) FROM console.sign_in_failures WHERE client = $2 AND at > now() - make_interval(secs => $3)))
"""


async def forget_failures(db: Connection, older_than_s: float, limit: int) -> int:
    result = await db.execute(
        "DELETE FROM console.sign_in_failures WHERE id IN (SELECT id FROM console.sign_in_failures"
        " WHERE at < now() - make_interval(secs => $1) LIMIT $2)", older_than_s, limit)
    return int(result.split()[-1])
