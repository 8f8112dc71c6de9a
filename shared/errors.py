"""One error hierarchy. Domain code raises these; the HTTP layer renders them as RFC 9457 problem+json.

Nothing here knows about HTTP beyond the status number each problem maps to, so domain modules may
import it without importing aiohttp.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://omnistock.dev/problems/"


class Problem(Exception):
    status: int = 500
    code: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.code

    @property
    def headers(self) -> dict[str, str]:
        """Response headers this problem carries besides its body (e.g. Retry-After)."""
        return {}

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(Problem):
    status, code, title = 400, "bad-request", "Bad request"


class MalformedJson(BadRequest):
    code, title = "malformed-json", "Malformed JSON body"


class ValidationFailed(Problem):
    """422 with `errors: [{field, problem}]` so a client can point at the offending field."""

    status, code, title = 422, "validation-failed", "Validation failed"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        fields = ", ".join(e["field"] for e in errors) or "request"
        super().__init__(detail or f"invalid: {fields}", errors=errors)


class Unauthorized(Problem):
    status, code, title = 401, "unauthorized", "Missing or unknown API key"


class Forbidden(Problem):
    status, code, title = 403, "forbidden", "Not allowed for this API key"


class NotFound(Problem):
    status, code, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, code, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(Problem):
    status, code, title = 409, "conflict", "Conflict"


class InsufficientStock(Conflict):
    code, title = "insufficient-stock", "Insufficient stock"


class IdempotencyConflict(Conflict):
    code, title = "idempotency-key-reused", "Idempotency-Key reused with a different request"


class IllegalTransition(Conflict):
    code, title = "illegal-transition", "Illegal status transition"


class RequestTimeout(Problem):
    """The request's body did not arrive in time; the connection is closed after the answer."""

    status, code, title = 408, "request-timeout", "Request not received in time"


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload-too-large", "Request body too large"


class IncompleteBody(BadRequest):
    """The body ended before its declared length, or its chunked framing was broken."""

    code, title = "incomplete-body", "Request body incomplete or malformed in transit"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class TooManyConnections(Problem):
    """Written by the connection guard itself to a connection past the per-client cap, then closed."""

    status, code, title = 429, "too-many-connections", "Too many connections from this address"


class ServiceUnavailable(Problem):
    status, code, title = 503, "service-unavailable", "Service unavailable"


def field_error(field: str, problem: str) -> ValidationFailed:
    return ValidationFailed([{"field": field, "problem": problem}])
