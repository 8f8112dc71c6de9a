"""Inventory and e-commerce on one fresh database: three stores and a warehouse, two SKUs.

Ship-enabled: store-b and wh-1. Pick-up: the three stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from services.ecommerce import projection
from shared.settings import Settings
from tests.conftest import Api, ServiceFactory

SHOP_SECRET = "shpss_test_0123456789abcdef"

LOCATIONS: dict[str, dict[str, Any]] = {
    "store-a": {"name": "Soho", "kind": "store", "lat": 51.5136, "lon": -0.1365, "ship": False, "pickup": True},
    "store-b": {"name": "Camden", "kind": "store", "lat": 51.5390, "lon": -0.1426, "ship": True, "pickup": True},
    "store-c": {"name": "Brighton", "kind": "store", "lat": 50.8225, "lon": -0.1372, "ship": False, "pickup": True},
    "wh-1": {"name": "Dartford DC", "kind": "warehouse", "lat": 51.4462, "lon": 0.2169, "ship": True, "pickup": False},
}
SKUS = {"TEE-M": {"name": "Tee M", "price": "19.90", "currency": "EUR"},
        "JEANS-32": {"name": "Jeans 32", "price": "79.00", "currency": "EUR"}}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Fast timers, and the local test receivers allow-listed (127.0.0.1 is refused otherwise)."""
    return settings.model_copy(update={
        "webhook_allow_hosts": ["127.0.0.1"],
        "webhook_backoff_base_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_timeout_s": 2.0,
        "webhook_max_attempts": 3,
        "webhook_coalesce_s": 0.0,
        "webhook_poll_interval_s": 0.1,
        "projection_poll_interval_s": 0.1,
        "shop_webhook_secret": SecretStr(SHOP_SECRET),
    })


@dataclass
class Channel:
    inventory: Api
    ecommerce: Api
    pool: asyncpg.Pool

    async def move(self, key: str, **body: Any) -> Any:
        status, resp, _ = await self.inventory.post("/v1/stock/movements", json=body, idem=key)
        assert status == 201, resp
        return resp

    async def receive(self, sku: str, location_id: str, qty: int, key: str | None = None) -> Any:
        return await self.move(key or f"r-{sku}-{location_id}-{qty}-{id(object())}", sku=sku,
                               location_id=location_id, kind="receipt", qty=qty)

    async def settled(self) -> None:
        """Wait until the projection has applied every event committed so far. One catch-up pass can stop
        short: an event becomes readable only once every older transaction has ended (shared/outbox.py)."""
        head = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM core.events")
        for _ in range(250):
            await projection.catch_up(self.pool)
            pending = await self.pool.fetchval(
                "SELECT count(*) FROM core.events e, ecommerce.cursors c"
                " WHERE c.name = 'availability' AND e.id <= $1 AND (e.txid, e.id) > (c.txid, c.event_id)"
                " AND split_part(e.topic, '.', 1) = ANY($2::text[])",
                head, list(projection.FAMILIES))
            if not pending:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the projection did not catch up")

    async def available(self, sku: str) -> int:
        await self.settled()
        status, body, _ = await self.ecommerce.get("/v1/availability", params={"sku": sku})
        assert status == 200, body
        return body["items"][0]["available"]


@pytest.fixture
async def channel(service: ServiceFactory, pool: asyncpg.Pool) -> Channel:
    inventory = await service("inventory")
    ecommerce = await service("ecommerce")
    for location_id, body in LOCATIONS.items():
        status, resp, _ = await inventory.put(f"/v1/locations/{location_id}", json=body)
        assert status == 201, resp
    for sku, body in SKUS.items():
        status, resp, _ = await inventory.put(f"/v1/skus/{sku}", json=body)
        assert status == 201, resp
    return Channel(inventory, ecommerce, pool)


class SseReader:
    """An SSE client that collects events as they arrive."""

    def __init__(self, api: Api, query: str = "", headers: dict[str, str] | None = None) -> None:
        self.api, self.query, self.headers = api, query, headers or {}
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> SseReader:
        self._task = asyncio.create_task(self._read())
        connected = asyncio.create_task(self._connected.wait())
        await asyncio.wait([self._task, connected], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        if self._task.done():
            self._task.result()  # the stream was refused: raise why
        assert self._connected.is_set(), "stream did not start within 5 s"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.api.key}", **self.headers}
        async with self.api.client.get(f"/v1/availability/stream{self.query}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            current: dict[str, Any] = {}
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("retry:"):
                    self._connected.set()
                elif line.startswith("id: "):
                    current["id"] = int(line[4:])
                elif line.startswith("event: "):
                    current["event"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and "data" in current:
                    self.events.append(dict(current))
                    current.clear()

    def of(self, topic: str = "availability.changed") -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == topic]


# --- a webhook receiver ------------------------------------------------------------------------------

SECRET = "whsec_test_0123456789abcdef"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A shop's webhook endpoint: records every request, answers what `respond` says."""

    server: TestServer
    requests: list[Received] = field(default_factory=list)
    respond: Callable[[Received], Awaitable[int]] | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hooks"))

    def of(self, sku: str) -> list[Received]:
        return [r for r in self.requests if r.json["data"]["sku"] == sku]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def handle(request: web.Request) -> web.Response:
        got = Received(dict(request.headers), await request.read())
        holder[0].requests.append(got)
        status = await holder[0].respond(got) if holder[0].respond else 200
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_post("/hooks", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder.append(Receiver(server))
    yield holder[0]
    await server.close()


async def subscribe(channel: Channel, receiver: Receiver, events: list[str] | None = None,
                    delivery: str = "each") -> int:
    status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={
        "url": receiver.url, "events": events or ["availability.changed"], "secret": SECRET, "delivery": delivery})
    assert status == 201, body
    assert "secret" not in body
    return int(body["id"])


def signed_correctly(request: Received) -> bool:
    """As a receiver checks it (README): t and v1 from the header, HMAC of "<t>." + body, t recent."""
    fields = dict(part.split("=", 1) for part in request.headers["X-Omnistock-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + request.body, hashlib.sha256).hexdigest()
    return (hmac.compare_digest(fields["v1"], expected) and abs(time.time() - int(fields["t"])) <= 300
            and request.headers["X-Omnistock-Timestamp"] == fields["t"])
