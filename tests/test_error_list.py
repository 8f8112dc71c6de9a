"""The README's list of problem types is the code's: every Problem subclass any service can raise,
with its status and title. `python -m tests.test_error_list --write` rewrites the README's copy."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from services import registry
from shared.errors import PROBLEM_BASE, Problem
from shared.settings import DEFAULT_PORTS

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- problem types: start -->", "<!-- problem types: end -->"


def problem_types() -> list[type[Problem]]:
    for name in DEFAULT_PORTS:  # each app module imports every module whose problems it can raise
        registry.load(name)
    importlib.import_module("services.cli")  # and the CLI's use cases (e.g. `omnistock users create`)
    seen: dict[str, type[Problem]] = {}
    todo = [Problem]
    while todo:
        kind = todo.pop()
        seen.setdefault(kind.code, kind)
        todo.extend(kind.__subclasses__())
    return sorted(seen.values(), key=lambda kind: (kind.status, kind.code))


def render() -> str:
    lines = ["| status | `type` (after `" + PROBLEM_BASE + "`) | title |", "|---|---|---|"]
    lines += [f"| {kind.status} | `{kind.code}` | {kind.title} |" for kind in problem_types()]
    return "\n".join(lines)


def readme_block(text: str) -> str | None:
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip()


def write_readme() -> None:
    text = README.read_text()
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    README.write_text(f"{before}{START}\n\n{render()}\n\n{END}{after}")


def test_every_problem_type_has_its_own_code() -> None:
    codes = [kind.code for kind in problem_types()]
    assert len(codes) == len(set(codes))


def test_the_readme_lists_exactly_the_problem_types_of_the_code() -> None:
    block = readme_block(README.read_text())
    assert block is not None, f"README.md has no {START} … {END} block"
    assert block == render(), (
        "README's problem types differ from the code; run `python -m tests.test_error_list --write`:\n" + render())


if __name__ == "__main__" and "--write" in sys.argv:
    write_readme()
