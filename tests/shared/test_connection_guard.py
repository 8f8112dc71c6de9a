"""Slow and greedy clients (shared/http/connection_guard.py), on a real socket with small settings:
late headers end their connection, one address cannot hold more than its share, and what has been
let in (a kept-alive connection, an event stream) is left alone."""

from __future__ import annotations

import asyncio
import contextlib

from tests.conftest import Api, ServiceFactory, assert_problem
from tests.wire import Wire, head

HALF_A_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_half_sent_header_sets_are_closed_after_the_header_timeout(service: ServiceFactory) -> None:
    api = await service("inventory", header_timeout_s=0.5)
    wires = [await Wire.open(api) for _ in range(60)]
    try:
        for wire in wires[:50]:
            await wire.send(HALF_A_HEAD)  # and nothing more; the last ten send nothing at all
        closed = await asyncio.gather(*(wire.closed_by_server() for wire in wires))
        assert all(closed)
        late = Wire(*await asyncio.open_connection(api.client.host, api.client.port))
        await late.send(HALF_A_HEAD)
        answer = await late.answer()  # a request had begun: it is told why before the close
        assert_problem(answer.status, answer.json(), 408, "request-timeout")
        assert await late.closed_by_server()
        late.close()
    finally:
        for wire in wires:
            wire.close()


async def test_a_client_trickling_its_headers_is_closed_before_it_finishes(service: ServiceFactory) -> None:
    api = await service("inventory", header_timeout_s=0.5)
    wire = await Wire.open(api)
    request = HEALTHZ.replace(b"\r\n\r\n", b"\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n")
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for byte in request:
                await wire.send(bytes([byte]))
                sent += 1
                await asyncio.sleep(0.05)  # ~12 s for the whole head, many times the deadline

    trickling = asyncio.create_task(trickle())
    try:
        assert await wire.closed_by_server()
        assert sent < len(request)
    finally:
        trickling.cancel()
        wire.close()


async def test_a_kept_alive_connection_idle_past_the_header_timeout_still_works(service: ServiceFactory) -> None:
    """Idle time between requests is the keep-alive timeout's business; the header clock starts with
    the next request's first byte."""
    api = await service("inventory", header_timeout_s=0.3)
    wire = await Wire.open(api)
    try:
        await wire.send(HEALTHZ)
        assert (await wire.answer()).status == 200
        await asyncio.sleep(1.0)
        await wire.send(HEALTHZ)
        assert (await wire.answer()).status == 200
    finally:
        wire.close()


async def test_connections_past_the_per_client_cap_are_refused_while_the_others_work(
        service: ServiceFactory) -> None:
    api = await service("inventory", max_connections_per_client=3)
    held = [await Wire.open(api) for _ in range(3)]
    try:
        for wire in held:
            await wire.send(HEALTHZ)
            assert (await wire.answer()).status == 200
        extra = await Wire.open(api)
        await extra.send_while_open(HEALTHZ)
        refused = await extra.answer()
        assert_problem(refused.status, refused.json(), 429, "too-many-connections")
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        assert await extra.closed_by_server()
        extra.close()
        for wire in held:  # the three let in are served as before
            await wire.send(HEALTHZ)
            assert (await wire.answer()).status == 200
        held.pop().close()
        for _ in range(100):  # the server sees the close soon; until then a new one may still be refused
            again = await Wire.open(api)
            await again.send_while_open(HEALTHZ)
            status = (await again.answer()).status
            again.close()
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
    finally:
        for wire in held:
            wire.close()


async def test_an_event_stream_stays_open_past_the_header_timeout(service: ServiceFactory) -> None:
    api: Api = await service("inventory", header_timeout_s=0.3)
    wire = await Wire.open(api)
    try:
        await wire.send(head("GET", "/v1/events", api, {"Accept": "text/event-stream"}))
        response_head = await asyncio.wait_for(wire.reader.readuntil(b"\r\n\r\n"), 20)
        assert response_head.startswith(b"HTTP/1.1 200")
        heartbeats = 0
        while heartbeats < 4:  # 0.5 s apart in the tests' settings: well past the 0.3 s header deadline
            line = await asyncio.wait_for(wire.reader.readline(), 20)
            assert line, "the stream was closed"
            heartbeats += b"keepalive" in line
    finally:
        wire.close()
