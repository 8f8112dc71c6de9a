"""The interactive API reference of every service, rendered in the browser by Swagger UI (vendored,
served from here) from each service's own /openapi.json.

"Try it out" goes through /reference/{service}/api/..., which passes the request on with the
Authorization header the developer typed into the page and nothing else of theirs (never the console
session's cookie or key): it can do exactly what that key could do by calling the service directly.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from services.console.api import api
from services.console.upstream import UPSTREAMS
from services.console.web import CSP, Session, page, render, upstream
from shared.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from shared.http.keys import SETTINGS
from shared.http.openapi import build_openapi

routes = web.RouteTableDef()
SERVICES = (*UPSTREAMS, "console")
# Swagger UI sets style attributes on its elements; only this page allows them.
REFERENCE_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
PASSED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Accept")
PASSED_BACK = ("content-type", "retry-after", "location", "x-request-id", "idempotency-replayed")


def _service(request: web.Request) -> str:
    name = request.match_info["service"]
    if name not in SERVICES:
        raise NotFound(f"no service {name!r}; services: {', '.join(SERVICES)}")
    return name


@routes.get("/reference")
@page()
async def reference_index(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, "reference/index.html", {"services": SERVICES})


@routes.get("/reference/{service}")
@page()
async def reference(request: web.Request, session: Session) -> web.StreamResponse:
    response = render(request, "reference/service.html", {"service": _service(request), "services": SERVICES})
    response.headers["Content-Security-Policy"] = REFERENCE_CSP
    return response


@routes.get("/reference/{service}/openapi.json")
@page()
async def openapi(request: web.Request, session: Session) -> web.StreamResponse:
    name = _service(request)
    if name == "console":
        reply_body: Any = build_openapi(api)
    else:
        reply = await upstream(request).call(name, "GET", "/openapi.json", key=session.key)
        if not reply.ok or not isinstance(reply.body, dict):
            raise NotFound(f"the {name} service has no API document ({reply.status})")
        reply_body = reply.body
    # Try-it-out calls go through this console, same origin, so no service needs CORS.
    via = {"url": f"/reference/{name}/api", "description": f"{name}, through the console"}
    reply_body = {**reply_body, "servers": [via]}
    return web.json_response(reply_body)


@routes.route("*", "/reference/{service}/api/{path:.*}")
@page()
async def try_it_out(request: web.Request, session: Session) -> web.StreamResponse:
    name = _service(request)
    if name == "console":
        raise NotFound("the console's own routes are called directly")
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"at most {limit} bytes through the reference page")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"at most {limit} bytes through the reference page")
    headers = {h: request.headers[h] for h in PASSED_HEADERS if h in request.headers}
    client = upstream(request)
    try:
        async with client.session.request(request.method, client.url(name, "/" + request.match_info["path"]),
                                          params=request.query, data=body or None, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=request.app[SETTINGS].request_timeout_s)
                                          ) as resp:
            payload = await resp.read()
            passed = {k: v for k, v in resp.headers.items() if k.lower() in PASSED_BACK}
            return web.Response(status=resp.status, body=payload, headers=passed)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ServiceUnavailable(f"the {name} service did not answer ({type(exc).__name__})") from None
