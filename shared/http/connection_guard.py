"""Slow and greedy clients, stopped before they reach aiohttp: every connection passes a guard first.

aiohttp waits for a request's headers as long as its idle keep-alive timeout allows, however slowly
they come: a thousand half-sent header sets, or one byte every few seconds, held their connections
for as long as the client liked. The guard wraps each connection's protocol (the factory the
listening socket calls, see shared/http/runner.py) and enforces two rules:

- **Header deadline.** A request's headers must be complete within `header_timeout_s` of the
  connection's opening, or, on a kept-alive connection, of the first byte after the previous
  request (the idle wait before that byte is aiohttp's keep-alive timeout, a separate knob, as in
  Go's ReadHeaderTimeout/IdleTimeout). Past it the connection is closed, with a 408 problem if part
  of a request had come. Once the app has the headers (`guarded_request` below) the guard steps
  aside: the body has its own clock (shared/http/body.py) and an event stream may last for days.
- **Connections per client address.** At most `max_per_client` open at once per service. Past it
  the connection is accepted, answered at once with a fixed 429 `too-many-connections` problem
  (`Retry-After: 1`), half-closed and dropped a moment later. A plain close would look like a network
  fault to a client; a 429 says what happened and that it may retry. Nothing of its request is read.

Known gap: bytes that arrive while a request is in the app (its body, or a pipelined next request)
do not start the clock; a pipelined partial request left hanging there waits out the keep-alive
timeout instead. Clients rarely pipeline; tills and shops do not.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import orjson
from aiohttp import web

from shared.errors import Problem, RequestTimeout, TooManyConnections
from shared.http.quiet_errors import quiet_handler

# How long a refused connection stays open after its 429, for the client to read it before the close
# (closing with its request still unread would reset the connection and could lose the answer).
REFUSED_LINGER_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_per_client: int  # 0: no cap


def raw_problem(problem: Problem, **headers: str) -> bytes:
    """A complete HTTP/1.1 problem response that closes its connection, written without aiohttp."""
    body = orjson.dumps(problem.to_dict())
    lines = [f"HTTP/1.1 {problem.status} {http.HTTPStatus(problem.status).phrase}",
             "Content-Type: application/problem+json", f"Content-Length: {len(body)}", "Connection: close",
             *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ClientGate:
    """Open connections per client address, shared by every connection of one listening service."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def admit(self, client: str | None) -> bool:
        if not self.cap or client is None:
            return True
        count = self._open.get(client, 0)
        if count >= self.cap:
            return False
        self._open[client] = count + 1
        return True

    def release(self, client: str | None) -> None:
        if not self.cap or client is None:
            return
        count = self._open.pop(client, 0) - 1
        if count > 0:
            self._open[client] = count

    def open_from(self, client: str) -> int:
        return self._open.get(client, 0)


def client_address(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None  # None: a Unix socket


class ConnectionGuard(asyncio.Protocol):
    """One connection: its address counted, its request headers timed, then aiohttp's protocol."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], gate: ClientGate,
                 limits: ConnectionLimits) -> None:
        self._make_inner = make_inner
        self._gate = gate
        self._limits = limits
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_app = 0  # requests whose headers the app has (more than one only when pipelined)
        self._part_received = False  # bytes of a request came since the clock started
        self._ending = False  # the last answer closes the connection: what still comes is no request

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are Transports in all but ancestry
        self._transport = transport
        client = client_address(transport)
        if not self._gate.admit(client):
            self._refuse(transport)
            return
        self._client = client
        self._inner = self._make_inner()
        self._inner.connection_made(transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:  # refused: its request is not read
            return
        if not self._in_app:
            if self._timer is None:
                self._start_clock()
            self._part_received = True
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        if self._inner is None:
            return
        self._gate.release(self._client)
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    # --- what the app tells the guard (guarded_request) -----------------------------------------

    def request_started(self) -> None:
        self._in_app += 1
        self._stop_clock()

    def request_finished(self, keep_alive: bool) -> None:
        self._in_app -= 1
        self._ending = not keep_alive
        # The clock starts again with the next request's first byte (data_received), not now: an idle
        # kept-alive connection is aiohttp's keep-alive timeout's business.

    # --- the clock ------------------------------------------------------------------------------

    def _start_clock(self) -> None:
        self._part_received = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout_s, self._headers_overdue)

    def _stop_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._part_received = False

    def _headers_overdue(self) -> None:
        self._timer = None
        transport = self._transport
        if self._in_app or transport is None or transport.is_closing():
            return
        if self._part_received and not self._ending:
            transport.write(raw_problem(RequestTimeout(
                f"the request's headers did not arrive within {self._limits.header_timeout_s:g} s")))
        transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        transport.write(raw_problem(TooManyConnections(
            f"at most {self._gate.cap} connections at once from one address; retry shortly"), Retry_After="1"))
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)


class GuardedFactory:
    """The protocol factory a listening socket calls: aiohttp's, behind a ConnectionGuard."""

    def __init__(self, server: web.Server, limits: ConnectionLimits) -> None:
        self.server = server
        self.limits = limits
        self.gate = ClientGate(limits.max_per_client)

    def __call__(self) -> ConnectionGuard:
        return ConnectionGuard(lambda: quiet_handler(self.server), self.gate, self.limits)


def guard_of(request: web.Request) -> ConnectionGuard | None:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, ConnectionGuard) else None


@web.middleware
async def guarded_request(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Tells the connection's guard that the app has this request's headers, and when it is done."""
    guard = guard_of(request)
    if guard is None:  # served without the guard (e.g. a bare aiohttp TestServer)
        return await handler(request)
    guard.request_started()
    keep_alive = True  # what aiohttp does with an exception raised through here (a redirect, a cancel)
    try:
        response = await handler(request)
        keep_alive = response.keep_alive is not False  # None: aiohttp decides, as for any request
        return response
    finally:
        guard.request_finished(keep_alive)
