"""Request id + one log line per request + metrics, and the one place errors become problem+json."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
import structlog
from aiohttp import web

from shared.errors import (
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    ServiceUnavailable,
    ValidationFailed,
)
from shared.http.keys import PRINCIPAL, SERVICE
from shared.http.metrics import LATENCY, REQUESTS
from shared.logging import get_logger

log = get_logger("omnistock.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Failures of the database itself (down, restarting, overloaded) are the server's trouble, not the
# client's: 503 so that clients retry, never a 500 that looks like a bug.
# By SQLSTATE class: 08 connection exceptions, 57 operator intervention (shutdown, crash of another
# backend, starting up, cancelled), 53 insufficient resources (too many connections, disk full).
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.InterfaceError,
    # asyncpg's "cannot switch to state N; another operation is in progress": a connection the server
    # terminated mid-operation, handed out again by the pool (MagicStack/asyncpg#784; SQLAlchemy #13241
    # documents the same). Seen in a drill around a PostgreSQL restart; shared/db.transaction drops it.
    asyncpg.exceptions.InternalClientError,
)


def during_outage(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised while handling, says the database is unavailable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, UNAVAILABLE):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(problem.to_dict(instance)),
        status=problem.status,
        content_type="application/problem+json",
        headers=problem.headers or None,
    )


def _from_http_exception(exc: web.HTTPException) -> Problem:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such resource")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"allowed: {', '.join(sorted(exc.allowed_methods))}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(exc.text or "body too large")
    problem = Problem(exc.reason)
    problem.status, problem.code, problem.title = exc.status, "http-error", exc.reason
    return problem


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await _render_errors(request, handler)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        service = request.app[SERVICE]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        REQUESTS.labels(service, request.method, route, str(status)).inc()
        LATENCY.labels(service, request.method, route).observe(elapsed)
        principal = request.get(PRINCIPAL)
        log.info(
            "request",
            service=service,
            method=request.method,
            path=request.path,
            status=status,
            latency_ms=round(elapsed * 1000, 2),
            principal=principal.subject if principal else None,
        )


async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        response = problem_response(problem, request.path)
        if not request.content.is_eof():
            # Answered before the body ended (413, 408, a refused key): what is still on its way is not
            # read as another request, nor drained for a keep-alive that nobody needs; the connection ends.
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(_from_http_exception(exc), request.path)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except asyncpg.TransactionRollbackError as exc:
        # Deadlock or serialization failure against a concurrent change: nothing was written, and the same
        # request will very likely succeed again, so 503 (retry), never a 500.
        log.warning("transaction rolled back by the database", error=str(exc))
        return problem_response(ServiceUnavailable("conflict with a concurrent change; retry"), request.path)
    except asyncpg.IntegrityConstraintViolationError as exc:
        # A rule the database enforces that the service did not check first: still the client's input,
        # so a 409 naming the rule, never a 500. Logged, because it means a missing check upstream.
        log.warning("constraint refused a request", constraint=getattr(exc, "constraint_name", None))
        return problem_response(Conflict(f"refused by rule {getattr(exc, 'constraint_name', None) or 'unknown'}"),
                                request.path)
    except asyncpg.DataError as exc:
        log.warning("database refused a value", error=str(exc))
        return problem_response(ValidationFailed([{"field": "body", "problem": str(exc)}]), request.path)
    except UNAVAILABLE as exc:
        log.warning("database unavailable", error=repr(exc))
        return problem_response(ServiceUnavailable("the database is unavailable; retry shortly"), request.path)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if during_outage(exc):
            # An error raised while handling an outage (e.g. in a rollback or a `finally`): the database's
            # trouble surfacing through the cleanup, still a 503.
            log.warning("database unavailable (seen while cleaning up)", error=repr(exc))
            return problem_response(ServiceUnavailable("the database is unavailable; retry shortly"), request.path)
        log.exception("unhandled error", method=request.method, path=request.path)
        return problem_response(Problem("unexpected server error; it has been logged"), request.path)
