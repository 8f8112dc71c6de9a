"""The one way a request body is read: to its end, counting bytes, against a size limit and a clock.

`request.content.read(n)` returns what has arrived so far, not the body: a body sent in two writes
came through cut at the first. Here every chunk is read until the end of the body, whatever its
framing (Content-Length, chunked, compressed: the count is of the bytes the handler would get), and:

- a declared Content-Length over the limit is refused before a byte is read;
- a body that passes the limit as it arrives is refused as soon as it does (chunked has no length);
- a body that has not ended `timeout_s` after reading began is 408, so a client trickling it cannot
  hold its connection (the connection guard takes over from there, shared/http/connection_guard.py);
- a body cut short (the client hung up before its Content-Length) or with broken chunked framing is 400.

Two ways to read: `receive_body` holds the whole body (every route, at most OMNISTOCK_MAX_BODY_BYTES);
`BodyStream` hands it over chunk by chunk as it arrives, for the few routes that take files far bigger
than that (a route declares it, shared/http/api.StreamedBody, with a limit and a clock of its own). A
streamed body's refusals are raised from the iteration, wherever the handler is: the handler must do
nothing it cannot undo until the stream has ended (the settlement import stages in one transaction).

The 408 and 413 answers close the connection (shared/http/middleware.py): the rest of such a body is
never read as a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from shared.errors import IncompleteBody, PayloadTooLarge, RequestTimeout


def _refuse_declared(request: web.Request, limit: int) -> None:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body of {declared} bytes declared; at most {limit} are accepted")


@contextlib.contextmanager
def _transport_refusals(timeout_s: float, received: Callable[[], int]) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s ({received()} bytes came); "
                             "send it again") from None
    except (HttpProcessingError, ConnectionError) as exc:
        # Raised by aiohttp's parser into the body stream: too few bytes before the connection ended,
        # a bad chunk size, a corrupt compressed body. The client's doing, never a 500 (nor a 503).
        raise IncompleteBody(f"the body could not be read to its end: {type(exc).__name__}") from None


async def receive_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body of `request`, at most `limit` bytes, arrived within `timeout_s`."""
    _refuse_declared(request, limit)
    body = bytearray()
    # Every byte already buffered (the usual small POST, sent with its headers): nothing left to wait
    # for, so no clock to arm (arming and cancelling one cost ~4 us a request).
    clock = contextlib.nullcontext() if request.content.is_eof() else asyncio.timeout(timeout_s)
    with _transport_refusals(timeout_s, lambda: len(body)):
        async with clock:
            while chunk := await request.content.readany():
                if len(body) + len(chunk) > limit:
                    raise PayloadTooLarge(f"body over {limit} bytes")
                body += chunk
    return bytes(body)


class BodyStream:
    """A request body as the chunks that arrive, at most `limit` bytes, ended within `timeout_s` of the
    first read; nothing is kept but the count (and, asked for, a SHA-256 of every byte, to fingerprint
    the body for an Idempotency-Key once it has been read). aiohttp stops reading the socket while its
    buffer is full (64 KiB), so a consumer slower than its client holds no more than that."""

    def __init__(self, request: web.Request, limit: int, timeout_s: float, *, hashed: bool = False) -> None:
        self._request = request
        self.limit = limit
        self.timeout_s = timeout_s
        self.received = 0
        self.ended = False
        self._hash = hashlib.sha256() if hashed else None

    def digest(self) -> bytes:
        """SHA-256 of the whole body (only once it has been read to its end)."""
        if self._hash is None or not self.ended:
            raise RuntimeError("the body was not hashed, or not read to its end")
        return self._hash.digest()

    async def chunks(self) -> AsyncIterator[bytes]:
        _refuse_declared(self._request, self.limit)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        content = self._request.content
        while True:
            with _transport_refusals(self.timeout_s, lambda: self.received):
                async with asyncio.timeout_at(deadline):
                    chunk = await content.readany()
            if not chunk:
                self.ended = True
                return
            self.received += len(chunk)
            if self.received > self.limit:
                raise PayloadTooLarge(f"body over {self.limit} bytes")
            if self._hash is not None:
                self._hash.update(chunk)
            yield chunk
