"""Idempotency-Key handling: the same key and body returns the first result; another body is a 409.

The claim row is inserted in the same transaction as the work it guards. A concurrent request with the
same key blocks on the primary key until the first commits, then reads the stored response; if the
first rolled back, the second simply does the work. So twenty copies sent at once make one result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.db import Connection
from shared.errors import BadRequest, IdempotencyConflict
from shared.text import text_problem

MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: Any
    replayed: bool


def request_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def check_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise BadRequest("this call needs an Idempotency-Key header", field="Idempotency-Key")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key longer than {MAX_KEY_LENGTH} characters", field="Idempotency-Key")
    if problem := text_problem(key):  # stored and logged like any client text (shared/text.py)
        raise BadRequest(f"Idempotency-Key: {problem}", field="Idempotency-Key")
    return key


async def run_once(
    conn: Connection,
    scope: str,
    key: str,
    body_hash: bytes,
    work: Callable[[], Awaitable[tuple[int, Any]]],
) -> StoredResponse:
    """Inside an open transaction: do `work` once per (scope, key), or return what it returned."""
    claimed = await conn.fetchval(
        "INSERT INTO core.idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (scope, key) DO NOTHING RETURNING true",
        scope, key, body_hash,
    )
    if not claimed:
        row = await conn.fetchrow(
            "SELECT request_hash, status, response FROM core.idempotency_keys WHERE scope = $1 AND key = $2",
            scope, key,
        )
        if row["request_hash"] != body_hash:
            raise IdempotencyConflict(f"Idempotency-Key '{key}' was already used with a different request")
        return StoredResponse(row["status"], row["response"], replayed=True)
    status, body = await work()
    await conn.execute(
        "UPDATE core.idempotency_keys SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
        scope, key, status, body,
    )
    return StoredResponse(status, body, replayed=False)
