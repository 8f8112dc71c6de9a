"""API keys (stored as SHA-256 hashes) and the principal a request acts as.

Keys are 256-bit random tokens, so a fast hash is enough: nobody brute-forces 2^256, and a slow KDF
would cost milliseconds on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal, get_args

from shared.db import Connection, Pool
from shared.errors import Forbidden, Unauthorized, field_error

Role = Literal["admin", "ops", "store", "shop", "finance", "auditor"]
ROLES: tuple[str, ...] = get_args(Role)
KEY_PREFIX = "osk_"


@dataclass(frozen=True)
class Principal:
    key_id: int
    role: str
    location_id: str | None = None

    @property
    def subject(self) -> str:
        return f"{self.role}:{self.key_id}"

    def require_role(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"role '{self.role}' may not do this (needs one of: {', '.join(roles)})")

    def require_location(self, location_id: str) -> None:
        """A store key acts only on its own location; other write roles are checked by require_role."""
        if self.role == "store" and self.location_id != location_id:
            raise Forbidden(f"this store key is bound to location '{self.location_id}', not '{location_id}'")


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_api_key(conn: Connection, role: str, location_id: str | None = None,
                         label: str | None = None, key: str | None = None) -> str:
    """Store a key's hash and return the key (the only time it is ever visible)."""
    if role not in ROLES:
        raise field_error("role", f"must be one of {', '.join(ROLES)}")
    if (role == "store") != (location_id is not None):
        raise field_error("location_id", "required for role 'store' and only for it")
    key = key or new_key()
    await conn.execute(
        "INSERT INTO core.api_keys (key_hash, role, location_id, label) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (key_hash) DO NOTHING",
        hash_key(key), role, location_id, label,
    )
    return key


async def ensure_bootstrap_admin(conn: Connection, key: str) -> None:
    await create_api_key(conn, "admin", label="bootstrap", key=key)


class KeyCache:
    """Looks keys up in the database, remembering answers briefly so a request costs no extra query."""

    def __init__(self, pool: Pool, ttl_s: float) -> None:
        self._pool = pool
        self._ttl = ttl_s
        self._entries: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, header: str | None) -> Principal:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("send 'Authorization: Bearer <api key>'")
        digest = hash_key(header[len("Bearer "):].strip())
        now = time.monotonic()
        cached = self._entries.get(digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            row = await self._pool.fetchrow(
                "SELECT id, role, location_id FROM core.api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                digest,
            )
            principal = Principal(row["id"], row["role"], row["location_id"]) if row else None
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now + self._ttl, principal)
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        return principal
