"""Free text from clients (names, reasons, notes, references): one rule for every service.

What a client writes ends up in terminals (logs, the CLI), CSV exports and web pages. Control
characters (C0 and C1: ESC sequences recolour or rewrite a terminal, CR/LF split a CSV row or a log
line, NUL truncates C strings), the line and paragraph separators U+2028/U+2029 (line breaks to a
browser or a JavaScript string), bidirectional controls (U+202E makes "gpj.exe" read as "exe.jpg")
and lone surrogates (no character at all; PostgreSQL refuses them) are refused. Every other character
is fine: accents, CJK, emoji and their zero-width joiners. Multi-line fields included: one rule is
one thing to know, and no field here needs more than one line.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SEPARATORS = frozenset("\u2028\u2029")


# Every character refused below, as one class (Cc is exactly U+0000-001F and U+007F-009F, Cs exactly
# U+D800-DFFF): the search runs in C, where a Python loop over each character cost ~4 us for an
# Idempotency-Key of 30 characters, on every order (tests/shared/test_text.py checks it against the loop).
REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why `value` may not be stored as free text (the first offending character), or None."""
    found = REFUSED.search(value)
    return None if found is None else _first_problem(value[found.start():], found.start())


def _first_problem(value: str, offset: int) -> str | None:
    for position, char in enumerate(value, offset):
        category = unicodedata.category(char)
        if category == "Cc":
            kind = "control character"
        elif char in BIDI_CONTROLS:
            kind = "bidirectional control"
        elif char in SEPARATORS:
            kind = "line or paragraph separator"
        elif category == "Cs":
            kind = "lone surrogate"
        else:
            continue
        return f"{kind} U+{ord(char):04X} at position {position} is not allowed in text"
    return None


def _checked(value: str) -> str:
    if problem := text_problem(value):
        raise PydanticCustomError("free_text", problem)
    return value


# Annotate every client-written text field with this (add length limits with StringConstraints).
FreeText = Annotated[str, AfterValidator(_checked)]
