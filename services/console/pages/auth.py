"""Signing in and out, and each person's home."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from services.console import passwords
from services.console import repository as repo
from services.console import sessions as rules
from services.console.web import (
    HOME,
    SIGN_IN_CSRF,
    Session,
    client_address,
    end_session,
    new_csrf,
    page,
    redirect,
    render,
    see_other,
    session_of,
    set_cookie,
)
from shared.auth import hash_key, new_key
from shared.http.keys import POOL, SETTINGS

routes = web.RouteTableDef()
WRONG = "Wrong user name or password"


def _safe_next(target: str | None) -> str | None:
    """Only a path of this site: never another host (`//evil`, `/\\evil`, `https://…`)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or len(target) > 2000:
        return None
    return target


def _sign_in_form(request: web.Request, *, status: int = 200, username: str = "", error: str | None = None,
                  problem: str | None = None) -> web.Response:
    token = request.cookies.get(rules.SIGN_IN_COOKIE) or new_csrf()
    request[SIGN_IN_CSRF] = token
    response = render(request, "auth/sign_in.html", {
        "form": {"username": username}, "next": _safe_next(request.query.get("next")) or "",
        "errors": {"password": error} if error else {}, "problem": problem}, status=status)
    set_cookie(request, response, rules.SIGN_IN_COOKIE, token, max_age=3600)
    return response


@routes.get("/sign-in")
async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if (session := session_of(request)) is not None:
        return see_other(HOME[session.role])
    return _sign_in_form(request)


@routes.post("/sign-in")
async def sign_in(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    form = await request.post()
    username = str(form.get("username") or "").strip().lower()[:64]
    password = str(form.get("password") or "")
    target = _safe_next(str(form.get("next") or "")) or None
    pool = request.app[POOL]
    client = client_address(request)
    if await repo.recent_failures(pool, username, client, settings.console_sign_in_window_s) >= \
            settings.console_sign_in_attempts:
        return _sign_in_form(request, status=429, username=username,
                             problem="Too many failed sign-ins; wait a few minutes and try again")
    user = await repo.user_by_name(pool, username) if username else None
    # argon2 spends ~50 ms of CPU: off the event loop, so other people's pages keep moving meanwhile.
    matches = await asyncio.to_thread(passwords.verify_password, user["password_hash"] if user else None, password)
    if user is None or not matches or user["disabled_at"] is not None:
        await repo.record_failure(pool, username or "-", client)
        return _sign_in_form(request, status=401, username=username, error=WRONG)
    token, key = rules.new_token(), new_key()
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.console_session_max_s)
    try:
        async with pool.acquire() as conn, conn.transaction():
            key_id = await repo.issue_person_key(conn, user["id"], hash_key(key), expires_at)
            await repo.insert_session(conn, rules.token_hash(token), user["id"], key_id, rules.seal_key(token, key),
                                      new_csrf(), expires_at)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != repo.NO_ENABLED_USER:
            raise
        return _sign_in_form(request, status=401, username=username, error=WRONG)  # disabled this instant
    response = see_other(target or HOME[user["role"]])
    set_cookie(request, response, rules.COOKIE, token, max_age=int(settings.console_session_max_s))
    response.del_cookie(rules.SIGN_IN_COOKIE, path="/")
    return response


@routes.post("/sign-out")
@page()
async def sign_out(request: web.Request, session: Session) -> web.StreamResponse:
    await end_session(request.app[POOL], session.token_hash, "signed-out")
    response = see_other("/sign-in")
    response.del_cookie(rules.COOKIE, path="/")
    return response


@routes.get("/")
@page()
async def home(request: web.Request, session: Session) -> web.StreamResponse:
    return redirect(request, HOME[session.role])
