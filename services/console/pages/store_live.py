"""The SKU page kept live: /store/sku/{sku}/events relays inventory's stock events for that one SKU to
the browser as htmx-sse events whose data is the page's re-rendered `stock` block, plus a sentence for
the screen reader's live region. A change is rendered from the event's own figures at once (no API call
in its way) and the page is read again half a second later.

One upstream stream per open page, opened with the person's key and filtered to the SKU by inventory
itself (and checked again here: a stream of another SKU's events is never relayed). It ends when the
upstream ends (the session ended, so the person's key was revoked) or when the browser goes away, so
the key's stream slot (16 for a store key) is given back at once, not at the next stock change.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2_fragments
import orjson
from aiohttp import web

from services.console.pages.store import SKU, STORE, location_names, sku_view
from services.console.upstream import Event
from services.console.web import CSP, Session, context, page, upstream
from shared.errors import NotFound, Problem, ServiceUnavailable
from shared.logging import get_logger

routes = web.RouteTableDef()
log = get_logger("omnistock.console")
BROWSER_CHECK_S = 1.0  # how soon a closed tab gives its upstream stream back
KEEPALIVE_S = 15.0  # a comment now and then: proxies keep the stream open, a dead client shows itself
WRITE_TIMEOUT_S = 30.0
REFRESH_AFTER_S = 0.5  # after a change, the whole page is read again this much later


def sse_message(event: str, html: str) -> bytes:
    """One SSE event; each line of the HTML is its own `data:` line (the client joins them with \\n)."""
    lines = "".join(f"data: {line}\n" for line in html.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


def announcement(changes: dict[str, dict[str, Any]], names: dict[str, str], here: str) -> str:
    """"Stock at Camden changed to 4", one sentence per location that changed in this burst."""
    sentences = []
    for location_id, change in changes.items():
        name = "this store" if location_id == here else names.get(location_id, location_id)
        sentences.append(f"Stock at {name} changed to {change.get('available')} available.")
    return " ".join(sentences)


async def _read_upstream(request: web.Request, session: Session, sku: str,
                         changes: asyncio.Queue[dict[str, Any] | None]) -> None:
    try:
        async for event in upstream(request).events("inventory", "/v1/events", key=session.key,
                                                    params={"sku": sku}):
            payload = _stock_change(event, sku)
            if payload is not None:
                changes.put_nowait(payload)
    except Problem as exc:  # the service went away: the page stays as it is, the browser reconnects
        log.info("store relay upstream ended", error=exc.detail)
    finally:
        changes.put_nowait(None)


def _stock_change(event: Event, sku: str) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) and payload.get("sku") == sku else None


def patched(view: dict[str, Any], burst: dict[str, dict[str, Any]], here: str) -> dict[str, Any] | None:
    """The page's figures with a burst of changes applied, or None when one of them is at a location the
    page does not list (or one it lists runs out): then the page is read again.

    A stock event carries the level after its change, and one SKU's events come in commit order, so the
    figures it gives are the level's own; nothing is computed here."""
    level = dict(view["here"])
    rows = [dict(row) for row in view["nearby"]]
    listed = {row["location_id"]: row for row in rows}
    for location_id, change in burst.items():
        if not all(isinstance(change.get(k), int) for k in ("on_hand", "reserved", "safety_stock", "available")):
            return None
        if location_id == here:
            level.update({k: change[k] for k in ("on_hand", "reserved", "safety_stock", "available")})
        elif location_id in listed and change["available"] > 0:
            listed[location_id]["available"] = change["available"]
        else:
            return None
    return {**view, "here": level, "nearby": rows}


def _take_burst(changes: asyncio.Queue[dict[str, Any] | None], first: dict[str, Any]
                ) -> tuple[dict[str, dict[str, Any]], bool]:
    """Every change already waiting, latest per location (a burst is rendered once); True if the stream ended."""
    burst = {first["location_id"]: first}
    while not changes.empty():
        more = changes.get_nowait()
        if more is None:
            return burst, True
        burst[more["location_id"]] = more
    return burst, False


async def _relay(request: web.Request, session: Session, sku: str, response: web.StreamResponse) -> None:
    """Each change is on the page at once, from the event's own figures; the page is read again shortly
    after (online availability follows stock through e-commerce's projection, nearby stores' order)."""
    changes: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    reader = asyncio.create_task(_read_upstream(request, session, sku, changes))
    env = aiohttp_jinja2.get_env(request.app)
    here = session.location_id or ""
    loop = asyncio.get_running_loop()
    view = await sku_view(request, session, sku)
    sent = ""
    refresh_at: float | None = None

    async def send(view: dict[str, Any], said: str | None) -> None:
        nonlocal sent
        html = jinja2_fragments.render_block(env, "store/sku.html", "stock", **context(request, view))
        if html == sent and said is None:
            return
        sent = html
        frames = sse_message("stock", html) + (sse_message("announce", said) if said else b"")
        await asyncio.wait_for(response.write(frames), WRITE_TIMEOUT_S)

    try:
        await send(view, None)  # a page that reconnects after a gap is brought up to date at once
        while True:
            wait = None if refresh_at is None else max(0.0, refresh_at - loop.time())
            try:
                first = await asyncio.wait_for(changes.get(), wait)
            except TimeoutError:
                refresh_at, view = None, await sku_view(request, session, sku)
                await send(view, None)
                continue
            if first is None:
                break
            burst, ended = _take_burst(changes, first)
            quick = patched(view, burst, here)
            view = quick if quick is not None else await sku_view(request, session, sku)
            # Read again shortly after any change (under a steady flow too: the first one sets the time).
            refresh_at = refresh_at or loop.time() + REFRESH_AFTER_S
            await send(view, announcement(burst, location_names(view), here))
            if ended:
                break
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _until_browser_gone(request: web.Request, response: web.StreamResponse) -> None:
    waited = 0.0
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(BROWSER_CHECK_S)
        waited += BROWSER_CHECK_S
        if waited >= KEEPALIVE_S:
            waited = 0.0
            await asyncio.wait_for(response.write(b": keepalive\n\n"), WRITE_TIMEOUT_S)


@routes.get(f"/store/sku/{{sku:{SKU}}}/events")
@page(*STORE)
async def sku_events(request: web.Request, session: Session) -> web.StreamResponse:
    sku = request.match_info["sku"]
    reply = await upstream(request).call("inventory", "GET", f"/v1/skus/{quote(sku, safe='')}", key=session.key)
    if not reply.ok:  # an unknown SKU would otherwise hold a stream slot open for nothing
        raise NotFound(reply.detail) if reply.status == 404 else ServiceUnavailable(reply.detail)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no", "Content-Security-Policy": CSP,
                                           "X-Content-Type-Options": "nosniff"})
    await response.prepare(request)
    await response.write(b"retry: 3000\n\n")
    tasks = [asyncio.create_task(_relay(request, session, sku, response)),
             asyncio.create_task(_until_browser_gone(request, response))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, (ConnectionResetError, TimeoutError, Problem)):
            log.info("store relay ended", reason=type(result).__name__)
        elif isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
    return response
