"""The key lifecycle's use cases (list, issue, revoke), shared by `/v1/keys` on every service and by
`omnistock keys`: the same SQL functions (shared/migrations/0003) whichever way a key is managed.

Over HTTP a service connects as its own role, which may not write core.api_keys; it calls
core.admin_issue_api_key / core.admin_revoke_api_key with the caller's admin key, which the database
checks itself. The CLI is the owner and calls core.issue_api_key / core.revoke_api_key directly.
Either way the key is returned once and only its hash is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shared.auth import ROLES, hash_key, new_key
from shared.db import Connection, Pool
from shared.errors import Conflict, NotFound, Unauthorized, field_error
from shared.paging import decode_cursor, encode_cursor

LIST_NAME = "api_keys"
KeyStatus = str  # "active" | "revoked" | "expired"
STATUSES = ("active", "revoked", "expired")


class LastAdminKey(Conflict):
    code, title = "last-admin-key", "The last active admin key cannot be revoked"


@dataclass(frozen=True)
class KeyRecord:
    """A key as listed: everything but its hash."""

    id: int
    role: str
    location_id: str | None
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_by: int | None
    revoked_by: int | None
    person: str | None  # the console user it stands for (a sign-in's key), None for a machine's
    status: KeyStatus


@dataclass(frozen=True)
class KeyRequest:
    role: str
    location_id: str | None = None
    label: str | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True)
class KeyPage:
    items: list[KeyRecord]
    next_cursor: str | None


# --- pure rules ----------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d{1,6})([wdhms])")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '1d12h', '90m', '2w', '3600s' (ValueError otherwise)."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"not a duration like 30d, 12h, 1d12h or 90m: {text!r}")
    delta = timedelta(**{_UNITS[u]: 0 for u in "wdhms"})
    for number, unit in parts:
        delta += timedelta(**{_UNITS[unit]: int(number)})
    if delta <= timedelta(0):
        raise ValueError("a duration must be longer than zero")
    return delta


def parse_expiry(text: str, now: datetime) -> datetime:
    """A duration from `now` ('30d') or an ISO 8601 time (UTC when it names no offset), in UTC."""
    try:
        delta = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return now + delta
        except OverflowError:
            raise ValueError(f"{text!r} is past the year 9999") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration (30d, 12h) or an ISO 8601 time: {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def check_request(request: KeyRequest, now: datetime) -> None:
    """What the database would refuse less clearly, refused first."""
    if request.role not in ROLES:
        raise field_error("role", f"must be one of {', '.join(ROLES)}")
    if (request.role == "store") != (request.location_id is not None):
        raise field_error("location_id", "required for role 'store' and only for it")
    if request.expires_at is not None and request.expires_at <= now:
        raise field_error("expires_at", "must be in the future")


def status_of(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> KeyStatus:
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


# --- SQL -----------------------------------------------------------------------------------------

COLUMNS = ("id, role, location_id, label, created_at, expires_at, last_used_at, revoked_at, created_by, revoked_by,"
           " person")
LIST = f"""
SELECT {COLUMNS}, now() AS now FROM core.api_keys
WHERE ($1::text IS NULL OR role = $1)
  AND ($2::text IS NULL
       OR ($2 = 'revoked' AND revoked_at IS NOT NULL)
       OR ($2 = 'expired' AND revoked_at IS NULL AND expires_at <= now())
       OR ($2 = 'active' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())))
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::bigint))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
GET = f"SELECT {COLUMNS}, now() AS now FROM core.api_keys WHERE id = $1"
ISSUE_AS_OWNER = f"SELECT {COLUMNS}, now() AS now FROM core.issue_api_key($1, $2, $3, $4, $5, NULL)"
ISSUE_AS_ADMIN = f"SELECT {COLUMNS}, now() AS now FROM core.admin_issue_api_key($6, $1, $2, $3, $4, $5)"
REVOKE_AS_OWNER = f"SELECT {COLUMNS}, now() AS now FROM core.revoke_api_key($1, NULL)"
REVOKE_AS_ADMIN = f"SELECT {COLUMNS}, now() AS now FROM core.admin_revoke_api_key($2, $1)"


def _record(row: Any) -> KeyRecord:
    fields = {name: row[name] for name in COLUMNS.split(", ")}
    return KeyRecord(**fields, status=status_of(row["revoked_at"], row["expires_at"], row["now"]))


def _problem(exc: asyncpg.PostgresError, request: KeyRequest | None = None) -> Exception:
    """The SQLSTATEs of shared/migrations/0003 as problems; anything else as it was."""
    code = getattr(exc, "sqlstate", None)
    if code == "OS001":
        return field_error("location_id", f"unknown location '{request.location_id if request else ''}'")
    if code == "OS002":
        return field_error("expires_at", "must be in the future")
    if code == "OS003":
        return Unauthorized("this admin key is no longer active")
    if code == "OS004":
        return NotFound("no such API key")
    if code == "OS005":
        return LastAdminKey("this is the last active admin key; create another admin key first")
    return exc


async def list_keys(pool: Pool | Connection, *, role: str | None = None, status: str | None = None,
                    cursor: str | None = None, limit: int = 50) -> KeyPage:
    after: tuple[Any, ...] = (None, None)
    if cursor is not None:
        after = decode_cursor(LIST_NAME, cursor, (datetime, int))
    rows = await pool.fetch(LIST, role, status, *after, limit + 1)
    items = [_record(row) for row in rows[:limit]]
    more = len(rows) > limit
    return KeyPage(items, encode_cursor(LIST_NAME, [items[-1].created_at, items[-1].id]) if more else None)


async def get_key(pool: Pool | Connection, key_id: int) -> KeyRecord:
    row = await pool.fetchrow(GET, key_id)
    if row is None:
        raise NotFound("no such API key")
    return _record(row)


async def issue_key(conn: Connection, request: KeyRequest, *, admin_key: str | None = None) -> tuple[str, KeyRecord]:
    """A new key and its record. `admin_key`: the acting admin's key (a service role's call); None: the
    database owner's (the CLI)."""
    check_request(request, datetime.now(UTC))
    key = new_key()
    args = [request.role, request.location_id, request.label, request.expires_at, hash_key(key)]
    try:
        if admin_key is None:
            row = await conn.fetchrow(ISSUE_AS_OWNER, *args)
        else:
            row = await conn.fetchrow(ISSUE_AS_ADMIN, *args, admin_key)
    except asyncpg.PostgresError as exc:
        raise _problem(exc, request) from None
    return key, _record(row)


async def revoke_key(conn: Pool | Connection, key_id: int, *, admin_key: str | None = None) -> KeyRecord:
    """Revoke `key_id` (again: unchanged); every service refuses it as soon as the change commits."""
    try:
        if admin_key is None:
            row = await conn.fetchrow(REVOKE_AS_OWNER, key_id)
        else:
            row = await conn.fetchrow(REVOKE_AS_ADMIN, key_id, admin_key)
    except asyncpg.PostgresError as exc:
        raise _problem(exc) from None
    return _record(row)


BY_HASH = f"SELECT {COLUMNS}, now() AS now FROM core.api_keys WHERE key_hash = $1"
ACTIVE_LABELLED = (f"SELECT {COLUMNS}, now() AS now FROM core.api_keys WHERE label = $1 AND revoked_at IS NULL"
                   " AND (expires_at IS NULL OR expires_at > now()) ORDER BY id")


async def record_of(conn: Pool | Connection, key: str) -> KeyRecord | None:
    """The record of the key itself (to check a key kept somewhere is still good), or None."""
    row = await conn.fetchrow(BY_HASH, hash_key(key))
    return _record(row) if row else None


async def active_labelled(conn: Pool | Connection, label: str) -> list[KeyRecord]:
    return [_record(row) for row in await conn.fetch(ACTIVE_LABELLED, label)]
