"""Background-task plumbing of this service: a wake-up wait and a stop that cannot hang.

In Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives just as the awaited thing
completes; a loop built on it (ours, or EventHub.follow_batches) may then ignore one cancel. Shutdown therefore
cancels until the task is really done, and our own waits use `asyncio.wait`, which never swallows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from shared.logging import get_logger

log = get_logger("omnistock.ecommerce")


async def wait_for_wake(wake: asyncio.Event, timeout_s: float) -> None:
    """Wait until `wake` is set or `timeout_s` passes."""
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout_s)
    finally:
        waiter.cancel()


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it is done (see the module doc), and log how it failed if it did."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", task=task.get_name(), error=repr(task.exception()))


def background(name: str, start: Callable[[web.Application], Coroutine[Any, Any, None]]
               ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context running `start(app)` as a task for as long as the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(start(app), name=name)
        yield
        await stop(task)

    return context
