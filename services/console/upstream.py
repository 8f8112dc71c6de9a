"""The console's way to the other services: their HTTP APIs, with the signed-in person's key.

One keep-alive connection pool for all of them. A refusal comes back as the service's problem+json,
which pages show (field errors next to their fields); a service that does not answer is a 503 page.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from shared.errors import ServiceUnavailable
from shared.settings import Settings

UPSTREAMS = ("inventory", "orders", "ecommerce", "finance", "ledger")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # the body's bytes as they came (a download passes them on unchanged)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def field_errors(self) -> dict[str, str]:
        """A refusal's field errors by field name (the last path element of a nested field)."""
        if self.ok or not isinstance(self.body, dict):
            return {}
        out: dict[str, str] = {}
        for error in self.body.get("errors") or []:
            if isinstance(error, dict) and "field" in error:
                out.setdefault(str(error["field"]), str(error.get("problem") or error.get("message") or "invalid"))
                out.setdefault(str(error["field"]).split(".")[-1], out[str(error["field"])])
        return out

    def items(self) -> list[Any]:
        """A list answer's `items`, or none when it was refused."""
        return self.body.get("items", []) if self.ok and isinstance(self.body, dict) else []

    def next_cursor(self) -> str | None:
        return self.body.get("next_cursor") if self.ok and isinstance(self.body, dict) else None

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("detail") or self.body.get("title") or f"HTTP {self.status}")
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Event:
    id: str | None
    event: str
    data: str


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self._base = {name: settings.upstream_url(name) for name in UPSTREAMS}
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s + 1)
        self._long_timeout = aiohttp.ClientTimeout(total=settings.long_request_timeout_s + 1)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=100, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, json_serialize=lambda v: orjson.dumps(v).decode())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, service: str, path: str) -> str:
        return self._base[service] + path

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() first"
        return self._session

    async def call(self, service: str, method: str, path: str, *, key: str, json_body: Any = None,
                   params: Mapping[str, str] | None = None, idempotency_key: str | None = None,
                   data: Any = None, content_type: str | None = None, long: bool = False,
                   request_id: str | None = None) -> Reply:
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if content_type:
            headers["Content-Type"] = content_type
        if request_id:
            headers["X-Request-Id"] = request_id
        try:
            async with self.session.request(
                method, self.url(service, path), json=json_body, data=data, params=params, headers=headers,
                timeout=self._long_timeout if long else self._timeout,
            ) as resp:
                raw = await resp.read()
                ctype = resp.headers.get("Content-Type", "")
                body: Any = orjson.loads(raw) if "json" in ctype and raw else raw.decode(errors="replace")
                return Reply(resp.status, body, dict(resp.headers), raw)
        except (aiohttp.ClientError, TimeoutError, OSError, json.JSONDecodeError, orjson.JSONDecodeError) as exc:
            raise ServiceUnavailable(f"the {service} service did not answer ({type(exc).__name__})") from None

    @asynccontextmanager
    async def download(self, service: str, path: str, *, key: str, params: Mapping[str, str] | None = None
                       ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose answer is left unread: a 200 body is passed on chunk by chunk, never held whole."""
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        try:
            async with self.session.get(self.url(service, path), params=params, headers=headers,
                                        timeout=self._long_timeout) as resp:
                yield resp
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServiceUnavailable(f"the {service} service did not answer ({type(exc).__name__})") from None

    @staticmethod
    async def reply_of(resp: aiohttp.ClientResponse) -> Reply:
        """A download's refusal read as a Reply (problem+json), like call()'s."""
        raw = await resp.read()
        try:
            body: Any = orjson.loads(raw) if "json" in resp.headers.get("Content-Type", "") and raw else \
                raw.decode(errors="replace")
        except orjson.JSONDecodeError:
            body = raw.decode(errors="replace")
        return Reply(resp.status, body, dict(resp.headers), raw)

    async def events(self, service: str, path: str, *, key: str, params: Mapping[str, str] | None = None,
                     last_event_id: str | None = None) -> AsyncIterator[Event]:
        """A service's event stream (SSE), event by event, until it ends or the caller stops reading."""
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        try:
            async with self.session.get(self.url(service, path), params=params, headers=headers,
                                        timeout=timeout) as resp:
                if resp.status != 200:
                    raise ServiceUnavailable(f"the {service} event stream answered {resp.status}")
                event_id, name, data = None, "message", []
                async for raw_line in resp.content:
                    line = raw_line.decode(errors="replace").rstrip("\r\n")
                    if not line:
                        if data:
                            yield Event(event_id, name, "\n".join(data))
                        event_id, name, data = None, "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        key_, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if key_ == "data":
                            data.append(value)
                        elif key_ == "event":
                            name = value
                        elif key_ == "id":
                            event_id = value
        except (aiohttp.ClientError, OSError) as exc:
            raise ServiceUnavailable(f"the {service} event stream broke ({type(exc).__name__})") from None
