"""Money on the wire: a decimal string with at most two decimals ("12.30"), never a float.

A JSON number is refused rather than converted: 0.1 + 0.2 style errors start the moment a float
exists, so we never let one in.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, StringConstraints, WithJsonSchema

MONEY_PATTERN = r"^-?[0-9]{1,12}(\.[0-9]{1,2})?$"
_MONEY = re.compile(MONEY_PATTERN)


def _parse(value: Any, *, signed: bool) -> Decimal:
    if isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ValueError('money is a decimal string such as "12.30"')
    if not _MONEY.match(text) or (not signed and text.startswith("-")):
        raise ValueError(f'"{text}" is not a {"" if signed else "non-negative "}amount with at most 2 decimals')
    return Decimal(text).quantize(Decimal("0.01"))


def _schema(signed: bool) -> dict[str, Any]:
    pattern = MONEY_PATTERN if signed else MONEY_PATTERN.replace("^-?", "^")
    return {"type": "string", "pattern": pattern, "examples": ["12.30"]}


Money = Annotated[
    Decimal,
    BeforeValidator(lambda v: _parse(v, signed=False)),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str),
    WithJsonSchema(_schema(False)),
]
SignedMoney = Annotated[
    Decimal,
    BeforeValidator(lambda v: _parse(v, signed=True)),
    PlainSerializer(lambda d: f"{d:.2f}", return_type=str),
    WithJsonSchema(_schema(True)),
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
