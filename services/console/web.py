"""Page plumbing: who is signed in, CSRF, security headers, rendering, forms and error pages.

Every page route is `async def handler(request, session)` under `@page(*roles)`: a signed-out visitor
is sent to /sign-in, a person of another role gets a 403 page, and the handler gets the Session whose
`key` is that person's own short-lived API key (the only credential the page may use).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp_jinja2
import jinja2_fragments
from aiohttp import BodyPartReader, web
from cryptography.exceptions import InvalidTag
from pydantic import BaseModel, ValidationError

from services.console import repository as repo
from services.console import sessions as rules
from services.console.upstream import Reply, Upstream
from shared.db import Pool
from shared.errors import Forbidden, Problem
from shared.http.keys import POOL, SETTINGS
from shared.logging import get_logger

UPSTREAM = web.AppKey("upstream", Upstream)
SESSION = web.RequestKey("console_session", object)  # a Session, once load_session found one
SIGN_IN_CSRF = web.RequestKey("sign_in_csrf", str)  # the sign-in form's token, before any session
# A multipart form's reader, its csrf_token part read already (so the rest, a file, can stream on).
MULTIPART = web.RequestKey("console_multipart", object)
log = get_logger("omnistock.console")

# Paths the shared API layer serves as JSON (system routes, /v1/keys); everything else is a page.
API_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics", "/openapi.json")
PUBLIC_PAGES = frozenset({"/sign-in"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
       " font-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")

# Each area's roles. The API decides what each key may do; this only keeps people off pages whose
# every call would be refused (and tells them so plainly).
AREAS: dict[str, tuple[str, ...]] = {
    "store": ("store",),
    "ops": ("ops", "admin"),
    "finance": ("finance", "admin"),
    "audit": ("auditor", "admin"),
}
HOME = {"store": "/store", "ops": "/ops", "admin": "/ops", "finance": "/finance", "auditor": "/audit"}


@dataclass(frozen=True)
class Session:
    token_hash: bytes
    username: str
    display_name: str
    role: str
    location_id: str | None
    key: str  # the person's API key
    csrf: str

    def may_open(self, area: str) -> bool:
        return self.role in AREAS[area]


class SignInRequired(Problem):
    status, code, title = 401, "sign-in-required", "Sign in first"


class CsrfRefused(Forbidden):
    code, title = "csrf-refused", "The form's security token is missing or wrong; reload the page and try again"


Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


def page(*roles: str) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A page for people of `roles` (all signed-in people when none are named)."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            session = request.get(SESSION)
            if not isinstance(session, Session):
                raise SignInRequired()
            if roles and session.role not in roles:
                raise Forbidden(f"a {session.role} account may not open this page")
            return await handler(request, session)

        run.__doc__ = handler.__doc__
        run.__name__ = handler.__name__
        return run

    return wrap


def session_of(request: web.Request) -> Session | None:
    session = request.get(SESSION)
    return session if isinstance(session, Session) else None


def upstream(request: web.Request) -> Upstream:
    return request.app[UPSTREAM]


def idempotency_key() -> str:
    """A fresh key for one form: rendered in it, so submitting it twice does the thing once."""
    return uuid.uuid4().hex


# --- rendering -----------------------------------------------------------------------------------


def who(actor: str | None) -> str:
    """An API's `actor` as people read it: the person's name for a console key (`role:id:name`),
    else the machine key (`role:id`), else the process that acted (`cli:…`, `system`)."""
    if not actor:
        return "—"
    parts = actor.split(":", 2)
    return f"{parts[2]} ({parts[0]})" if len(parts) == 3 and parts[1].isdigit() else actor


def when(value: str | None) -> str:
    """An API timestamp (ISO 8601, UTC) to the second, as pages show it."""
    return value[:19].replace("T", " ") + " UTC" if value else "—"


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def context(request: web.Request, values: dict[str, Any]) -> dict[str, Any]:
    session = session_of(request)
    return {"session": session, "csrf": session.csrf if session else request.get(SIGN_IN_CSRF, ""),
            "areas": [a for a in AREAS if session and session.may_open(a)], "path": request.path,
            "idem": idempotency_key(), "errors": {}, "form": {}, "problem": None, **values}


def render(request: web.Request, template: str, values: dict[str, Any] | None = None, *, status: int = 200,
           block: str | None = None) -> web.Response:
    """The page, or only `block` of it for an htmx request (one template, not a second copy of its markup)."""
    ctx = context(request, values or {})
    if block is not None and is_htmx(request):
        env = aiohttp_jinja2.get_env(request.app)
        html = jinja2_fragments.render_block(env, template, block, **ctx)
        return web.Response(text=html, status=status, content_type="text/html")
    return aiohttp_jinja2.render_template(template, request, ctx, status=status)


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def redirect(request: web.Request, location: str) -> web.Response:
    """303 for a form post; htmx follows HX-Redirect instead of swapping the next page into a fragment."""
    if is_htmx(request):
        return web.Response(status=204, headers={"HX-Redirect": location})
    return see_other(location)


def refused(request: web.Request, template: str, values: dict[str, Any], reply: Reply,
            block: str | None = None) -> web.Response:
    """A form the API refused, shown again with each field's error beside it and the API's reason."""
    errors = reply.field_errors()
    status = reply.status if 400 <= reply.status < 500 else 503
    return render(request, template, {**values, "errors": errors, "problem": reply.detail}, status=status,
                  block=block)


# --- forms ---------------------------------------------------------------------------------------


async def form_data(request: web.Request) -> dict[str, str]:
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


async def parse_form(request: web.Request, model: type[M]) -> tuple[M | None, dict[str, str], dict[str, str]]:
    """(the form as `model`, or None; field errors by name; the raw values, to fill the form again)."""
    raw = await form_data(request)
    values = {k: v for k, v in raw.items() if k not in ("csrf_token", "idem")}
    cleaned = {k: (v.strip() or None) for k, v in values.items()}
    try:
        return model.model_validate(cleaned), {}, values
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "form"
            errors.setdefault(name, error["msg"].removeprefix("Value error, "))
        return None, errors, values


# --- the middleware ------------------------------------------------------------------------------


def lifetime(request: web.Request) -> rules.Lifetime:
    s = request.app[SETTINGS]
    return rules.Lifetime(timedelta(seconds=s.console_session_idle_s), timedelta(seconds=s.console_session_max_s))


def client_address(request: web.Request) -> str:
    """The client's address; a trusted proxy's X-Forwarded-For names it instead."""
    remote = request.remote or "unknown"
    if _trusted_proxy(request, remote):
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        return forwarded[:64] or remote
    return remote


def _trusted_proxy(request: web.Request, remote: str) -> bool:
    trusted = request.app[SETTINGS].console_trusted_proxies
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted)


def is_secure(request: web.Request) -> bool:
    mode = request.app[SETTINGS].console_secure_cookies
    if mode != "auto":
        return mode == "always"
    if request.secure:
        return True
    return _trusted_proxy(request, request.remote or "") and request.headers.get("X-Forwarded-Proto") == "https"


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax",
                        secure=is_secure(request))


async def end_session(pool: Pool, token_hash: bytes, reason: str) -> None:
    """End a session and revoke its person's key (every service refuses it within a second)."""
    async with pool.acquire() as conn, conn.transaction():
        key_id = await repo.end_session(conn, token_hash, reason)
        if key_id is not None:
            await repo.revoke_person_key(conn, key_id)


async def load_session(request: web.Request) -> Session | None:
    token = request.cookies.get(rules.COOKIE)
    if not token or len(token) > rules.MAX_TOKEN_LENGTH:
        return None
    digest = rules.token_hash(token)
    pool = request.app[POOL]
    row = await repo.open_session(pool, digest)
    if row is None:
        return None
    reason = "disabled" if row["disabled_at"] else rules.end_reason(
        row["created_at"], row["last_seen_at"], row["now"], lifetime(request))
    if reason or row["expires_at"] <= row["now"]:
        await end_session(pool, digest, reason or "expired")
        return None
    try:
        key = rules.unseal_key(token, row["sealed_key"])
    except InvalidTag:
        return None
    if rules.needs_touch(row["last_seen_at"], row["now"]):
        await repo.touch_session(pool, digest)
    return Session(digest, row["username"], row["display_name"], row["role"], row["location_id"], key,
                   row["csrf_token"])


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a form came from; one from another site is refused whatever it carries."""
    origin = request.headers.get("Origin")
    if origin is None:  # no browser omits it on a cross-site POST; the token below still has to match
        return True
    host = request.headers.get("X-Forwarded-Host") if _trusted_proxy(request, request.remote or "") else None
    host = host or request.host
    return origin.split("://", 1)[-1] == host


async def _check_csrf(request: web.Request, expected: str) -> None:
    if not _same_origin(request):
        raise CsrfRefused("this form was sent from another site")
    given = request.headers.get("X-CSRF-Token")
    if given is None and request.content_type == "application/x-www-form-urlencoded":
        given = (await request.post()).get("csrf_token")  # type: ignore[assignment]
    elif given is None and request.content_type == "multipart/form-data":
        given = await _multipart_token(request)
    if not isinstance(given, str) or not expected or not rules.same_token(given, expected):
        raise CsrfRefused()


async def _multipart_token(request: web.Request) -> str | None:
    """A multipart form's token must be its first part (browsers send fields in page order), so a file
    after it is never read into memory before the token has been checked."""
    try:
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "csrf_token":
            return None
        token = b""
        while not part.at_eof() and len(token) <= 256:
            token += await part.read_chunk(256)
    except (ValueError, AssertionError, web.HTTPException):
        return None
    request[MULTIPART] = reader
    return token.decode(errors="replace") if len(token) <= 256 else None


@web.middleware
async def console_pages(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    if request.path.startswith(API_PREFIXES):
        return await handler(request)
    try:
        response = await _page(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            _secure_headers(exc)
            raise
        response = _error_page(request, exc.status, exc.reason)
    except SignInRequired:
        target = quote(request.path_qs, safe="/?=&")
        if is_htmx(request):
            response = web.Response(status=204, headers={"HX-Redirect": f"/sign-in?next={target}"})
        else:
            response = see_other(f"/sign-in?next={target}")
    except Problem as problem:
        response = _error_page(request, problem.status, problem.detail)
    except asyncio.CancelledError:
        raise
    _secure_headers(response)
    return response


async def _page(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> web.StreamResponse:
    if request.path.startswith("/static/"):
        return await handler(request)
    session = await load_session(request)
    if session is not None:
        request[SESSION] = session
    elif request.path not in PUBLIC_PAGES:
        raise SignInRequired()  # a signed-out visitor sees the sign-in page and nothing else, not even a 404
    if request.method in UNSAFE:
        if request.path == "/sign-in":
            await _check_csrf(request, request.cookies.get(rules.SIGN_IN_COOKIE, ""))
        else:
            await _check_csrf(request, session.csrf if session else "")
    return await handler(request)


def _secure_headers(response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if headers.get("Content-Type", "").startswith("text/html"):
        headers.setdefault("Cache-Control", "no-store")


def _error_page(request: web.Request, status: int, detail: str) -> web.Response:
    values = {"status": status, "detail": detail}
    if is_htmx(request):
        return render(request, "error.html", values, status=status, block="content")
    return render(request, "error.html", values, status=status)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
