"""A drill's result: figures anyone can quote and the list of broken promises (empty = passed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shared.auth import create_api_key


@dataclass
class DrillReport:
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        verdict = "PASSED" if self.ok else f"FAILED ({len(self.problems)} problems)"
        out = [f"{self.name}: {verdict}"]
        out += [f"  {name}: {value}" for name, value in self.figures.items()]
        out += [f"  problem: {problem}" for problem in self.problems[:50]]
        return out


async def create_key(database_url: str, role: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await create_api_key(conn, role, label="drill")
    finally:
        await conn.close()
