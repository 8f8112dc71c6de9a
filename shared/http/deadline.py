"""A request answers within its deadline, whatever the database does.

A PostgreSQL that stops answering without refusing (SIGSTOPped, a paused VM, a partition that drops
packets) makes asyncpg wait far past `command_timeout`: the timed-out query is cancelled through a new
connection the frozen server never answers, and the rollback and the pool's release wait for that
cancellation. Cancelling the request's own task does not help, since its cleanup awaits the same
things. So the work runs in a task of its own; when the deadline passes the client gets its 503 at
once and the task is cancelled and left to finish its cleanup whenever the server comes back. A write
cut off this way may still commit: the client learns the outcome by retrying with its Idempotency-Key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from shared.errors import ServiceUnavailable

T = TypeVar("T")

# Strong references to cut-off tasks until they end (asyncio keeps only weak ones).
_abandoned: set[asyncio.Task[Any]] = set()


class DeadlineExceeded(ServiceUnavailable):
    code, title = "deadline-exceeded", "Request deadline exceeded"


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


async def within_deadline(work: Coroutine[Any, Any, T], seconds: float, what: str = "the request") -> T:
    """Await `work`; after `seconds`, raise DeadlineExceeded without waiting for it to wind down."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:  # the client went away: the work goes too
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)
    raise DeadlineExceeded(f"{what} did not finish within {seconds:g} s (is the database answering?); "
                           "retry, with the same Idempotency-Key for a write, to learn its outcome")


def abandoned_tasks() -> int:
    """Cut-off tasks still winding down (exposed for tests and metrics)."""
    return len(_abandoned)
