"""Opaque keyset cursors for every list that pages.

A page ends at its last row's sort key (e.g. `(created_at, id)`, unique by construction); the next
page starts strictly after it, so rows sharing a timestamp are neither skipped nor repeated, and rows
inserted meanwhile land before or after the cursor, never shift it. Clients get the key as an opaque
string (`next_cursor`) and send it back (`?cursor=`): its shape is ours to change.

    cursor = encode_cursor("orders", [row["created_at"], row["id"]])
    created_at, order_id = decode_cursor("orders", query.cursor, (datetime, uuid.UUID))

The cursor names the list it belongs to, so one list's cursor sent to another is a 422, not a page
of something else.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import StringConstraints

from shared.errors import field_error

MAX_CURSOR = 512
# A `?cursor=` as the request models take it: what it holds is checked when the use case decodes it.
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CURSOR)]

def _bigint(value: Any) -> int:
    """Sort keys that are ints are bigint columns: a forged cursor outside them is refused here, not
    by the database."""
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise ValueError("not a bigint")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise ValueError("not text")
    return value


_DECODERS: dict[type, Any] = {
    datetime: datetime.fromisoformat,
    date: date.fromisoformat,
    uuid.UUID: lambda value: uuid.UUID(_text(value)),  # uuid.UUID(5) is an AttributeError, not a ValueError
    int: _bigint,
    str: _text,
    Decimal: Decimal,
}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


def encode_cursor(list_name: str, key: Sequence[Any]) -> str:
    raw = orjson.dumps([list_name, *(_plain(v) for v in key)])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(list_name: str, cursor: str, types: Sequence[type], field: str = "cursor") -> tuple[Any, ...]:
    """The sort key a cursor carries, typed as `types`; a cursor of another list, tampered with or
    truncated is a 422 naming `field`."""
    problem = field_error(field, "not a cursor of this list (send back a next_cursor value unchanged)")
    if len(cursor) > MAX_CURSOR:
        raise problem
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise problem from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != list_name:
        raise problem
    try:
        values = tuple(_DECODERS[kind](value) for kind, value in zip(types, data[1:], strict=True))
    except (TypeError, ValueError, ArithmeticError):
        raise problem from None
    for kind, value in zip(types, values, strict=True):
        if kind is datetime and value.tzinfo is None:
            raise problem
    return values
