"""Routes declared with their pydantic models, so validation and /openapi.json come from one place.

    api = Api("inventory")

    @api.put("/v1/skus/{sku}", body=SkuIn, response=SkuOut, roles=("admin", "ops"))
    async def put_sku(call: Call[SkuIn, None]) -> SkuOut: ...

The wrapper authenticates, checks the role, parses the body and query (bad input becomes a 4xx
problem before the handler runs) and renders the handler's result as JSON.
"""

from __future__ import annotations

import functools
import math
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Union

import orjson
from aiohttp import web
from multidict import istr
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.auth import Principal
from shared.db import Connection, Pool, transaction
from shared.errors import MalformedJson, UnsupportedMediaType, ValidationFailed
from shared.http.body import BodyStream, receive_body
from shared.http.deadline import within_deadline
from shared.http.keys import BUCKETS, KEY_CACHE, POOL, PRINCIPAL, SETTINGS, TOKENS_LEFT
from shared.idempotency import check_key, request_hash, run_once
from shared.settings import Settings

B = TypeVar("B")
Q = TypeVar("Q")
Handler = Callable[["Call[Any, Any]"], Awaitable[Any]]


@dataclass
class Reply:
    """A JSON reply with a status other than the route's default, or extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamedBody:
    """Bodies of these media types reach the handler unread, as `Call.stream` (shared/http/body.py), with
    a size limit and a clock of their own, `limits(settings)` = (bytes, seconds): files far bigger than
    the default limit, which the handler consumes as they arrive."""

    types: tuple[str, ...]
    limits: Callable[[Settings], tuple[int, float]]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    name: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    roles: tuple[str, ...] | None = None  # None: any authenticated key
    public: bool = False  # no key needed (health, metrics, openapi)
    idempotent: bool = False  # requires Idempotency-Key
    summary: str = ""
    raw_body_types: tuple[str, ...] = ()  # non-JSON bodies the handler parses itself (e.g. text/csv)
    produces: str = "application/json"
    also: tuple[int, ...] = ()  # other success statuses with the same body (e.g. 201 for a PUT that creates)
    extra_responses: dict[int, str] = field(default_factory=dict)  # problem statuses beyond the usual ones
    long_running: bool = False  # deadline long_request_timeout_s instead of request_timeout_s
    streamed_body: StreamedBody | None = None
    accepted: type[BaseModel] | None = None  # a 202 with this body: the work goes on in the background

    @property
    def streaming(self) -> bool:
        return self.produces == "text/event-stream"


@dataclass
class Call(Generic[B, Q]):
    """What a handler gets: the parsed request and the app's resources."""

    request: web.Request
    route: Route
    principal: Principal
    body: B
    query: Q
    raw_body: bytes
    stream: BodyStream | None = None  # a body of one of the route's streamed_body types, unread

    @property
    def pool(self) -> Pool:
        return self.request.app[POOL]

    @property
    def settings(self) -> Settings:
        return self.request.app[SETTINGS]

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def idempotency(self) -> tuple[str, str, bytes]:
        """(scope, key, fingerprint) of this request's Idempotency-Key claim (400 without a key)."""
        key = check_key(self.request.headers.get("Idempotency-Key"))
        scope = f"{self.route.name}|{self.principal.subject}"
        return scope, key, request_hash(_canonical(self.body) if self.body is not None else self.raw_body)

    async def once(self, work: Callable[[Connection], Awaitable[tuple[int, Any]]]) -> Reply:
        """Run `work` in one transaction, at most once per Idempotency-Key (see shared.idempotency)."""
        scope, key, fingerprint = self.idempotency()
        async with transaction(self.pool) as conn:

            async def rendered() -> tuple[int, Any]:
                status, result = await work(conn)
                return status, to_jsonable(result)

            stored = await run_once(conn, scope, key, fingerprint, rendered)
        headers = {"Idempotent-Replayed": "true"} if stored.replayed else {}
        return Reply(stored.status, stored.body, headers)


def _canonical(body: Any) -> bytes:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def to_jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, list):
        return [to_jsonable(item) for item in result]
    return result


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(to_jsonable(body)), status=status, content_type="application/json", headers=headers
    )


def validation_errors(exc: ValidationError, prefix: str = "") -> ValidationFailed:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"] if part != "__root__")
        errors.append({"field": f"{prefix}{loc}" if loc else prefix.rstrip(".") or "body", "problem": err["msg"]})
    return ValidationFailed(errors)


def _is_list_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (list, tuple, set):
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_list_field(arg) for arg in typing.get_args(annotation))
    return False


@functools.cache
def _query_fields(model: type[BaseModel]) -> dict[str, bool]:
    """Each query parameter of `model` and whether it repeats (?sku=A&sku=B); worked out once per model."""
    return {info.alias or name: _is_list_field(info.annotation) for name, info in model.model_fields.items()}


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    fields = _query_fields(model)
    raw: dict[str, Any] = {
        key: request.query.getall(key) if repeats else request.query[key]
        for key, repeats in fields.items() if key in request.query
    }
    unknown = set(request.query) - fields.keys()
    if unknown and model.model_config.get("extra") == "forbid":
        raise ValidationFailed([{"field": k, "problem": "unknown query parameter"} for k in sorted(unknown)])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_errors(exc) from None


def parse_body(request: web.Request, route: Route, raw: bytes) -> Any:
    """The route's model from the body's bytes (None for raw bodies such as text/csv, or no model)."""
    if route.body is None:
        return None
    ctype = request.content_type
    if ctype in route.raw_body_types or (route.streamed_body and ctype in route.streamed_body.types):
        return None
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith("+json"):
        accepted = ", ".join(("application/json", *route.raw_body_types,
                              *(route.streamed_body.types if route.streamed_body else ())))
        raise UnsupportedMediaType(f"send {accepted}, not {ctype}")
    if not raw.strip():
        raise ValidationFailed([{"field": "body", "problem": "a JSON body is required"}])
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"body is not valid JSON: {exc}") from None
    try:
        return route.body.model_validate(data)
    except ValidationError as exc:
        raise validation_errors(exc) from None


async def read_body(request: web.Request) -> bytes:
    """Every byte of the body (shared/http/body.py), b"" when there is none."""
    if not request.can_read_body:
        return b""
    settings = request.app[SETTINGS]
    return await receive_body(request, settings.max_body_bytes, settings.body_timeout_s)


RATE_LIMIT_POLICY, RATE_LIMIT = istr("RateLimit-Policy"), istr("RateLimit")


def with_rate_headers(request: web.Request, principal: Principal, response: web.Response) -> web.Response:
    """RateLimit-* on a keyed route's answer, so a client can slow down before it meets a 429."""
    tokens = request.get(TOKENS_LEFT)
    if tokens is not None and tokens != math.inf:
        values = request.app[BUCKETS].headers(principal.role, tokens)
        if values is not None:
            headers = response.headers
            headers[RATE_LIMIT_POLICY], headers[RATE_LIMIT] = values
    return response


MAX_PATH_PARAM = 200


class Api:
    """A service's routes. `path_types` gives the type of each path parameter by name (e.g. a SKU
    pattern), checked before the handler runs and shown in /openapi.json."""

    def __init__(self, service: str, path_types: dict[str, Any] | None = None) -> None:
        self.service = service
        self.routes: list[Route] = []
        self.path_types: dict[str, TypeAdapter[Any]] = {
            name: TypeAdapter(kind) for name, kind in (path_types or {}).items()
        }

    def route(self, method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            name = options.pop("name", handler.__name__)
            summary = options.pop("summary", (handler.__doc__ or "").strip().split("\n")[0])
            self.routes.append(Route(method, path, handler, name=name, summary=summary, **options))
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)

    def mount(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, route.path, _endpoint(route, self.path_types), name=route.name)

    def path_schema(self, name: str) -> dict[str, Any]:
        adapter = self.path_types.get(name)
        return adapter.json_schema() if adapter else {"type": "string", "maxLength": MAX_PATH_PARAM}


def check_path(match_info: dict[str, str], path_types: dict[str, TypeAdapter[Any]]) -> None:
    errors = []
    for name, value in match_info.items():
        if len(value) > MAX_PATH_PARAM or not value.isprintable():
            errors.append({"field": name, "problem": f"at most {MAX_PATH_PARAM} printable characters"})
        elif name in path_types:
            try:
                path_types[name].validate_python(value)
            except ValidationError as exc:
                errors.append({"field": name, "problem": exc.errors(include_url=False)[0]["msg"]})
    if errors:
        raise ValidationFailed(errors)


def _endpoint(
    route: Route, path_types: dict[str, TypeAdapter[Any]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        if route.streaming:  # an event stream lives as long as its client; it has no deadline
            principal, query = await admit(request)
            return await handle(request, principal, query, await read_body(request))
        settings = request.app[SETTINGS]
        seconds = settings.long_request_timeout_s if route.long_running else settings.request_timeout_s
        if not request.can_read_body:
            return await within_deadline(serve_bodiless(request), seconds)
        if route.streamed_body is not None and request.content_type in route.streamed_body.types:
            # Read while the handler works, so the body's clock runs inside the deadline's (the route's
            # limits must end first: shared/settings.py).
            return await within_deadline(serve_streamed(request, route.streamed_body), seconds)
        if request.content.is_eof():
            # The whole body came with the headers (the usual small POST): reading it waits for nothing
            # the client does, so one deadline task covers the lot (a second one cost ~9 us a request).
            return await within_deadline(serve_arrived(request), seconds)
        # The deadline times the server's work; the body's arrival is the client's and has its own clock
        # (OMNISTOCK_BODY_TIMEOUT_S, 408). The key is checked first: a keyed route reads no stranger's body.
        principal, query = await within_deadline(admit(request), seconds)
        raw = await read_body(request)
        return await within_deadline(handle(request, principal, query, raw), seconds)

    async def serve_bodiless(request: web.Request) -> web.StreamResponse:
        principal, query = await admit(request)
        return await handle(request, principal, query, b"")

    async def serve_arrived(request: web.Request) -> web.StreamResponse:
        principal, query = await admit(request)  # still first: a refused key's body is never parsed
        return await handle(request, principal, query, await read_body(request))

    async def serve_streamed(request: web.Request, streamed: StreamedBody) -> web.StreamResponse:
        principal, query = await admit(request)  # first: a refused key's body is never read
        limit, timeout_s = streamed.limits(request.app[SETTINGS])
        stream = BodyStream(request, limit, timeout_s, hashed=request.headers.get("Idempotency-Key") is not None)
        return await handle(request, principal, query, b"", stream)

    async def admit(request: web.Request) -> tuple[Principal, Any]:
        """Path, key, role and query checked: who asks, and for what."""
        check_path(dict(request.match_info), path_types)
        principal = (
            Principal(0, "anonymous")
            if route.public
            else await request.app[KEY_CACHE].authenticate(request.headers.get("Authorization"))
        )
        request[PRINCIPAL] = principal
        if not route.public:
            # After the key, before the role: a key hammering routes it may not call is throttled too.
            request[TOKENS_LEFT] = request.app[BUCKETS].take(principal.key_id, principal.role, time.monotonic())
            if route.roles is not None:
                principal.require_role(*route.roles)
        return principal, parse_query(request, route.query) if route.query else None

    async def handle(request: web.Request, principal: Principal, query: Any, raw: bytes,
                     stream: BodyStream | None = None) -> web.StreamResponse:
        body = parse_body(request, route, raw)
        result = await route.handler(Call(request, route, principal, body, query, raw, stream))
        if isinstance(result, web.StreamResponse):
            return result  # an event stream's headers are sent already; a raw response is the handler's
        if isinstance(result, Reply):
            return with_rate_headers(request, principal, json_response(result.body, result.status, result.headers))
        return with_rate_headers(request, principal, json_response(result, route.status))

    return endpoint
