"""Server-Sent Events over the event hub: resumable from Last-Event-ID, with heartbeats.

Each stream holds one of its key's stream slots (shared/http/rate_limit.py) from before its first byte
until it ends, whatever ends it: past the key's cap the request is a 429 `too-many-streams` instead.
A client that vanishes without closing is noticed at the next write, a heartbeat at the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from shared.errors import ValidationFailed
from shared.event_stream import resume_point, sse_frame
from shared.http.keys import HUB, KEY_CACHE, PRINCIPAL, SERVICE, SETTINGS, STREAMS
from shared.http.metrics import SSE_STALENESS
from shared.outbox import Event, Position

KEEPALIVE = b": keepalive\n\n"
WRITE_TIMEOUT_S = 30.0  # a client that accepts nothing for this long is gone; drop it


async def resume_position(request: web.Request, families: list[str]) -> Position:
    """Where a stream starts: after Last-Event-ID (header, or `last_event_id` query for curl), else now;
    410 `stream-resync-required` for an id past the outbox's retention window (shared/event_stream.py)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    hub = request.app[HUB]
    if raw is None or raw == "":
        return hub.head
    if not raw.isdigit() or len(raw) > 19:
        raise ValidationFailed([{"field": "Last-Event-ID", "problem": "must be an event id (a positive integer)"}])
    position = await resume_point(hub.pool, int(raw), families)
    if position is None:
        raise ValidationFailed([{"field": "Last-Event-ID", "problem": f"no event with id {raw}"}])
    return position


async def stream_events(
    request: web.Request,
    *,
    families: list[str],
    keep: Callable[[Event], bool],
    render: Callable[[Event], bytes],
) -> web.StreamResponse:
    start = await resume_position(request, families)
    principal = request[PRINCIPAL]
    with request.app[STREAMS].held(principal.key_id, principal.role):
        return await _stream(request, start, families, keep, render)


async def _stream(request: web.Request, start: Position, families: list[str], keep: Callable[[Event], bool],
                  render: Callable[[Event], bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    heartbeat_s = request.app[SETTINGS].sse_heartbeat_s
    service = request.app[SERVICE]

    async def pump() -> None:
        try:
            await response.write(b"retry: 2000\n\n")
            # One write per batch the hub hands over: a write per event cost a syscall (and a task) each.
            async for batch in request.app[HUB].follow_batches(start, families, heartbeat_s):
                kept = [event for event in batch if keep(event)]
                frames = b"".join(sse_frame(event, render) for event in kept) if batch else KEEPALIVE
                if frames:
                    await asyncio.wait_for(response.write(frames), WRITE_TIMEOUT_S)
                    observe_staleness(service, kept)
        except (ConnectionResetError, TimeoutError):
            pass

    await until_key_invalid(request, pump(), response)
    return response


def observe_staleness(service: str, events: list[Event]) -> None:
    """Each written event's age: from its created_at (inside its writer's transaction) to now."""
    now = time.time()
    histograms: dict[str, Any] = {}  # labels() per family, not per event: it was 1 % of a stream's CPU
    for event in events:
        family = event.topic.split(".", 1)[0]
        histogram = histograms.get(family) or histograms.setdefault(family, SSE_STALENESS.labels(service, family))
        histogram.observe(max(0.0, now - event.created_at.timestamp()))


async def until_key_invalid(request: web.Request, work: Coroutine[Any, Any, None],
                            response: web.StreamResponse) -> None:
    """Run `work` (a stream) until it ends or the caller's key is revoked or expires; then the stream
    ends with a comment saying why, and the client's reconnect is refused with 401."""
    principal = request.get(PRINCIPAL)
    streaming = asyncio.create_task(work)
    if principal is None or principal.key_id == 0:
        await streaming
        return
    invalid = asyncio.create_task(request.app[KEY_CACHE].wait_invalid(principal))
    try:
        await asyncio.wait({streaming, invalid}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (streaming, invalid):
            task.cancel()
        await asyncio.gather(streaming, invalid, return_exceptions=True)
    if streaming.done() and not streaming.cancelled() and (failure := streaming.exception()) is not None:
        raise failure
    if invalid.done() and not invalid.cancelled() and invalid.exception() is None:
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            await asyncio.wait_for(response.write(f": {invalid.result()}\n\n".encode()), WRITE_TIMEOUT_S)
