"""Waiting in tests for something that happens in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], within_s: float = 10.0) -> T:
    """Poll `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within_s}s")
        await asyncio.sleep(0.02)
