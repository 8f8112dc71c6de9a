"""The free-text rule: control, bidi and separator characters refused; every ordinary character kept."""

from __future__ import annotations

import sys
import unicodedata
from typing import Annotated

import pytest
from pydantic import BaseModel, StringConstraints, ValidationError

from shared.errors import BadRequest
from shared.idempotency import check_key
from shared.text import BIDI_CONTROLS, REFUSED, SEPARATORS, FreeText, text_problem

HOSTILE = {
    "ansi escape": "Soho \x1b[31mred\x1b[0m",
    "cr lf": "Soho\r\nInjected: row",
    "lf": "two\nlines",
    "tab": "a\tb",
    "nul": "nul\x00byte",
    "del": "del\x7f",
    "c1 next line": "c1\x85next",
    "c1 csi": "c1\x9b31m",
    "rlo": "invoice\u202egpj.exe",
    "lri": "left\u2066isolate\u2069",
    "rlm": "mark\u200f",
    "arabic letter mark": "mark\u061c",
    "line separator": "line\u2028sep",
    "paragraph separator": "para\u2029sep",
    "lone surrogate": "half\ud800",
}
ORDINARY = ["Soho", "Café Zürich-Straße", "東京 渋谷店", "Tee 👕 size M", "👨‍👩‍👧 family pack",
            "Ωmega – “quoted” ‘text’ …", "עברית", "العربية", "नमस्ते", "a b", "x" * 300]


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_characters_are_named_with_their_position(value: str) -> None:
    problem = text_problem(value)
    assert problem is not None and "U+" in problem and "position" in problem


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_unicode_text_passes(value: str) -> None:
    assert text_problem(value) is None


class _Model(BaseModel):
    name: Annotated[FreeText, StringConstraints(min_length=1, max_length=10)]


def test_the_annotated_type_refuses_with_a_clear_message_and_keeps_length_limits() -> None:
    with pytest.raises(ValidationError) as caught:
        _Model(name="a\x1bb")
    [error] = caught.value.errors()
    assert error["loc"] == ("name",) and error["msg"].startswith("control character U+001B at position 1")
    with pytest.raises(ValidationError):
        _Model(name="x" * 11)
    assert _Model(name="Café").name == "Café"


@pytest.mark.parametrize("value", [HOSTILE["ansi escape"], HOSTILE["rlo"], HOSTILE["c1 next line"]])
def test_an_idempotency_key_follows_the_same_rule(value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_key(value)
    assert caught.value.extra["field"] == "Idempotency-Key" and "U+" in caught.value.detail
    assert check_key("order-Zürich-42") == "order-Zürich-42"


def test_the_fast_search_refuses_exactly_the_characters_the_rule_names() -> None:
    # REFUSED (one regex, for speed) must match every code point the per-character rule refuses, and no other.
    wrong = [hex(cp) for cp in range(sys.maxunicode + 1)
             if (REFUSED.search(chr(cp)) is not None)
             != (unicodedata.category(chr(cp)) in ("Cc", "Cs") or chr(cp) in BIDI_CONTROLS or chr(cp) in SEPARATORS)]
    assert wrong == []
    assert text_problem("key-\u00e9-ok\x1b") == "control character U+001B at position 8 is not allowed in text"
