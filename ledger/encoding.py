"""Canonical bytes of ledger entries and statements, and the ledger's timestamp format.

Canonical encoding (what a Merkle leaf hashes and what a signature covers):

    json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

i.e. UTF-8 JSON, object keys sorted by code point, no whitespace, non-ASCII characters written as
themselves (not \\u escapes). Allowed values: objects with string keys, arrays, strings, integers,
true, false, null. Floats are refused: money is a decimal string ("12.30"), and a float's text form
is not stable across languages, so two honest encoders could hash the same entry differently.
Any JSON library in any language can reproduce these bytes, which is what lets an auditor check a
leaf hash without our code.

Timestamps are RFC 3339 UTC with microseconds and a "Z" suffix, e.g. "2024-05-01T12:00:00.000000Z";
fixed width so that the signed text of a timestamp has exactly one spelling.
"""

import json
from datetime import UTC, datetime
from typing import Any

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# One encoder, built once: exactly what json.dumps(..., sort_keys=True, separators=(",", ":"),
# ensure_ascii=False) would build on every call (a third of an append's encoding time).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _check_json_value(value: Any, path: str) -> None:
    # bool is a subclass of int and both are fine; the order of checks only matters for floats.
    if value is None or isinstance(value, str | int):
        return
    if isinstance(value, float):
        raise ValueError(f"{path}: floats are not allowed in ledger entries (write money as a decimal string)")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: object keys must be strings, got {type(key).__name__} {key!r}")
            _check_json_value(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _check_json_value(item, f"{path}[{position}]")
        return
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value (use a string for decimals and times)")


def canonical_bytes(value: Any) -> bytes:
    """The canonical UTF-8 JSON bytes of `value`; ValueError if it holds floats or non-JSON types."""
    _check_json_value(value, "$")
    text = _ENCODER.encode(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in a string has no UTF-8 form
        raise ValueError(f"$: string is not valid Unicode: {exc.reason}") from exc


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC text of an aware datetime, in the one spelling the ledger signs."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    """Parse a timestamp written by format_timestamp; ValueError for any other spelling."""
    moment = datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    if format_timestamp(moment) != text:
        raise ValueError(f"timestamp {text!r} is not in canonical form")
    return moment
