"""People's accounts: the owner's use cases behind `omnistock users ...` (the console only reads them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.console import passwords
from services.console import repository as repo
from shared.db import Connection
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.text import text_problem

USER_ROLES = ("store", "ops", "finance", "auditor", "admin")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}\Z")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    role: str
    location_id: str | None
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> User:
        return cls(row["id"], row["username"], row["display_name"], row["role"], row["location_id"],
                   row["created_at"], row["disabled_at"])


class UserExists(Conflict):
    code, title = "user-exists", "A user with this name exists"


def user_problems(username: str, display_name: str, role: str, location_id: str | None,
                  password: str) -> list[dict[str, str]]:
    """Every field error of a new user, empty when it may be created (pure: no database)."""
    errors: list[dict[str, str]] = []
    if not USERNAME.match(username):
        errors.append({"field": "username", "problem": "2-64 of a-z 0-9 . _ -, starting with a letter or digit"})
    if not display_name.strip() or (problem := text_problem(display_name)):
        errors.append({"field": "display_name", "problem": "required" if not display_name.strip() else problem})
    if role not in USER_ROLES:
        errors.append({"field": "role", "problem": f"one of {', '.join(USER_ROLES)}"})
    elif (role == "store") != (location_id is not None):
        errors.append({"field": "location_id",
                       "problem": "a store associate needs a location" if role == "store" else "only for store"})
    if problem := passwords.password_problem(password):
        errors.append({"field": "password", "problem": problem})
    return errors


async def create_user(conn: Connection, *, username: str, display_name: str, role: str,
                      location_id: str | None = None, password: str) -> User:
    errors = user_problems(username, display_name, role, location_id, password)
    if not errors and location_id is not None and not await repo.location_exists(conn, location_id):
        errors.append({"field": "location_id", "problem": f"no location {location_id!r}"})
    if errors:
        raise ValidationFailed(errors)
    try:
        row = await repo.insert_user(conn, username, display_name.strip(), role, location_id,
                                     passwords.hash_password(password))
    except asyncpg.UniqueViolationError:
        raise UserExists(f"user {username!r} exists") from None
    return User.of(row)


async def list_users(conn: Connection) -> list[User]:
    return [User.of(row) for row in await repo.list_users(conn)]


async def disable_user(conn: Connection, username: str) -> User:
    """Disabled at once: open sessions end and the person's keys are revoked (every service within a second)."""
    row = await repo.disable_user(conn, username)
    if row is None:
        raise NotFound(f"no user {username!r}")
    return User.of(row)


async def enable_user(conn: Connection, username: str) -> User:
    row = await repo.enable_user(conn, username)
    if row is None:
        raise NotFound(f"no user {username!r}")
    return User.of(row)


async def set_password(conn: Connection, username: str, password: str) -> User:
    if problem := passwords.password_problem(password):
        raise ValidationFailed([{"field": "password", "problem": problem}])
    row = await repo.set_password(conn, username, passwords.hash_password(password))
    if row is None:
        raise NotFound(f"no user {username!r}")
    return User.of(row)
