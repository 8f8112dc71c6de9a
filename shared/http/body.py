"""The one way a request body is read: to its end, counting bytes, against a size limit and a clock.

`request.content.read(n)` returns what has arrived so far, not the body: a body sent in two writes
came through cut at the first. Here every chunk is read until the end of the body, whatever its
framing (Content-Length, chunked, compressed: the count is of the bytes the handler would get), and:

- a declared Content-Length over the limit is refused before a byte is read;
- a body that passes the limit as it arrives is refused as soon as it does (chunked has no length);
- a body that has not ended `timeout_s` after reading began is 408, so a client trickling it cannot
  hold its connection (the connection guard takes over from there, shared/http/connection_guard.py);
- a body cut short (the client hung up before its Content-Length) or with broken chunked framing is 400.

The 408 and 413 answers close the connection (shared/http/middleware.py): the rest of such a body is
never read as a request.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from shared.errors import IncompleteBody, PayloadTooLarge, RequestTimeout


async def receive_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body of `request`, at most `limit` bytes, arrived within `timeout_s`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body of {declared} bytes declared; at most {limit} are accepted")
    body = bytearray()
    # Every byte already buffered (the usual small POST, sent with its headers): nothing left to wait
    # for, so no clock to arm (arming and cancelling one cost ~4 us a request).
    clock = contextlib.nullcontext() if request.content.is_eof() else asyncio.timeout(timeout_s)
    try:
        async with clock:
            while chunk := await request.content.readany():
                if len(body) + len(chunk) > limit:
                    raise PayloadTooLarge(f"body over {limit} bytes")
                body += chunk
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s ({len(body)} bytes came); "
                             "send it again") from None
    except (HttpProcessingError, ConnectionError) as exc:
        # Raised by aiohttp's parser into the body stream: too few bytes before the connection ended,
        # a bad chunk size, a corrupt compressed body. The client's doing, never a 500 (nor a 503).
        raise IncompleteBody(f"the body could not be read to its end: {type(exc).__name__}") from None
    return bytes(body)
