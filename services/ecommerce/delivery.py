"""Sending one webhook: an HTTP client that only connects where the SSRF policy allows.

The policy is enforced on the addresses actually connected to: host names go through a resolver that
drops non-public addresses (unless allow-listed), and aiohttp connects to exactly the addresses the
resolver returned, so a name that resolves to a public address when checked and to 10.0.0.1 when
connecting (DNS rebinding) cannot slip through. IP literals skip resolvers in aiohttp, so they are
checked before the request. Redirects are never followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import functools
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from services.ecommerce import domain
from shared.settings import Settings

MAX_ERROR_CHARS = 300


class RefusedDestination(OSError):
    """The URL's host is, or resolves only to, an address the policy refuses."""


class PolicyResolver(AbstractResolver):
    def __init__(self, allow_list: list[str], inner: AbstractResolver | None = None) -> None:
        self._allow_list = allow_list
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if domain.address_allowed(r["host"], host, self._allow_list, port)]
        if not allowed:
            raise RefusedDestination(f"{host} resolves only to non-public addresses (not allow-listed)")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def refusal(url: str, allow_list: list[str]) -> str | None:
    """Why the URL may not be called at all (checked before any connection), or None. Host names are
    checked again, on every attempt, by PolicyResolver when they are resolved."""
    return _refusal(url, tuple(allow_list))


@functools.lru_cache(maxsize=4096)
def _refusal(url: str, allow_list: tuple[str, ...]) -> str | None:
    # A pure function of the URL and the policy (no DNS here), asked on every attempt of every
    # subscription: cached, as the same few URLs come back thousands of times a second.
    if problem := domain.url_problem(url):
        return problem
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = list(allow_list)
    if not domain.port_allowed(host, port, allowed):
        return f"port {port}: webhooks go to ports 80 and 443 unless '{host}:{port}' is allow-listed"
    ip = domain.literal_ip(host)
    if ip is not None and not domain.address_allowed(ip, host, allowed, port):
        return f"{host} is not a public address (not allow-listed)"
    if ip is None and host.lower().rstrip(".") in domain.LOCAL_NAMES \
            and not domain.address_allowed("127.0.0.1", host, allowed, port):
        return f"{host} is the local machine (not allow-listed)"
    return None


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """One pooled, policy-bound HTTP client per dispatcher."""

    def __init__(self, settings: Settings) -> None:
        self._allow_list = list(settings.webhook_allow_hosts)
        self._timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_s,
                                              connect=settings.webhook_connect_timeout_s)
        self._per_host = settings.webhook_connections_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self._allow_list), limit=256,
                                         limit_per_host=self._per_host, use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                              headers={"User-Agent": "omnistock-webhooks/1"})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        assert self._session is not None, "Sender.start() first"
        started = time.perf_counter()
        if problem := refusal(url, self._allow_list):
            return Outcome(None, f"refused: {problem}", 0.0)
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(4096)  # drain a little for connection reuse; never the whole body
                status = resp.status
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except RefusedDestination as exc:
            status, error = None, f"refused: {exc}"
        except aiohttp.ClientConnectorError as exc:
            # aiohttp wraps resolver errors; our refusal keeps its own message.
            refused = isinstance(exc.os_error, RefusedDestination)
            status, error = None, ("refused: " if refused else "connect: ") + str(exc.os_error or exc)
        except TimeoutError:
            status, error = None, "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            status, error = None, f"{type(exc).__name__}: {exc}"
        elapsed = (time.perf_counter() - started) * 1000
        return Outcome(status, error[:MAX_ERROR_CHARS] if error else None, round(elapsed, 2))
