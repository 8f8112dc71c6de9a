"""aiohttp's own error answers, made safe to send and to log.

When aiohttp's parser refuses a request (a control character or a newline in a header value, a header
past the size limit, a malformed header name) it answers 400 with the offending bytes quoted, and logs
them with a traceback through `aiohttp.server`: a till's `Authorization: Bearer osk_…` line with one
bad byte ended up in the answer and in the log. This handler answers those requests, and any other
error aiohttp handles itself (500, 504), with a fixed problem+json that quotes nothing of the request,
and logs only the status and the kind of error.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shared.errors import BadRequest, Problem
from shared.logging import get_logger

log = get_logger("omnistock.http")


def problem_for(status: int) -> Problem:
    if status == 400:
        return BadRequest("malformed HTTP request (its content is not repeated here); check the header values"
                          " for control characters, line breaks and length")
    problem = Problem("the server could not handle this request")
    problem.status = status
    return problem


class QuietRequestHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        log.warning("request refused by the HTTP layer", status=status, error=type(exc).__name__ if exc else None,
                    remote=request.remote)
        if request.writer.output_size > 0:  # part of an answer went out already: the connection is broken
            raise ConnectionError("response already started; cannot send the error")
        response = web.Response(status=status, body=orjson.dumps(problem_for(status).to_dict()),
                                content_type="application/problem+json")
        response.force_close()
        return response


def quiet_handler(server: web.Server) -> RequestHandler:
    """What `server()` makes, with the error path above (the same arguments aiohttp's Server passes)."""
    return QuietRequestHandler(server, loop=server._loop, **server._kwargs)  # noqa: SLF001
