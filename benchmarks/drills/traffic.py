"""Client traffic for the drills: order placement that remembers every acknowledged order, ledger
appends that remember every receipt, and /readyz probes. Each request's outcome and latency is kept,
so a drill can say what happened during an outage and that no request outlived the client timeout."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import orjson

HOT_SKU = "DRILL-HOT"  # little stock everywhere: it sells out, so the oversell check has teeth


@dataclass(frozen=True)
class Catalog:
    """What the drill seeds through the inventory API: ship-enabled locations, SKUs, stock per level."""

    locations: int = 3
    skus: int = 6
    stock: int = 300
    hot_stock: int = 15

    @property
    def location_ids(self) -> list[str]:
        return [f"drill-wh-{i}" for i in range(self.locations)]

    @property
    def sku_ids(self) -> list[str]:
        return [HOT_SKU, *(f"DRILL-{i:04d}" for i in range(self.skus - 1))]

    def stock_of(self, sku: str) -> int:
        return self.hot_stock if sku == HOT_SKU else self.stock


async def seed_catalog(inventory_url: str, admin_key: str, catalog: Catalog) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with aiohttp.ClientSession(inventory_url, headers=headers) as session:
        for i, location in enumerate(catalog.location_ids):
            body = {"name": location, "kind": "warehouse", "lat": 51.0 + i / 10, "lon": -0.1 * i,
                    "ship": True, "pickup": False}
            await _expect(partial(session.put, f"/v1/locations/{location}", json=body), (200, 201))
        for sku in catalog.sku_ids:
            await _expect(partial(session.put, f"/v1/skus/{sku}", json={"name": sku, "price": "10.00",
                                                                       "currency": "EUR"}), (200, 201))
        receipts = [{"sku": sku, "location_id": location, "kind": "receipt", "qty": catalog.stock_of(sku)}
                    for sku in catalog.sku_ids for location in catalog.location_ids]
        gate = asyncio.Semaphore(16)  # hundreds at once on a busy machine ran past the request deadline

        async def receive(body: dict[str, Any]) -> None:
            async with gate:
                await _expect(partial(session.post, "/v1/stock/movements", json=body, headers={
                    "Idempotency-Key": f"seed-{body['sku']}-{body['location_id']}"}), (201,))

        await asyncio.gather(*(receive(body) for body in receipts))


async def _expect(request: Any, statuses: tuple[int, ...], attempts: int = 5) -> Any:
    """Send `request()` until it answers one of `statuses`; a 503 (a deadline passed on a busy machine)
    is retried as a client would, the same key and body again."""
    for attempt in range(1, attempts + 1):
        async with request() as response:
            body = await response.json(content_type=None)
            if response.status in statuses:
                return body
            if response.status != 503 or attempt == attempts:
                raise RuntimeError(f"{response.method} {response.url}: {response.status} {body}")
        await asyncio.sleep(0.2 * attempt)


@dataclass(frozen=True)
class Ack:
    """An acknowledged write: the key and exact body bytes sent, and what the service answered."""

    key: str
    body: bytes
    result_id: str  # order id, or the ledger receipts' seqs joined


@dataclass
class Outcome:
    started: float  # time.monotonic()
    latency_s: float
    status: int | None  # None: no HTTP answer (connection refused/reset, client timeout)
    error: str | None = None


@dataclass
class TrafficLog:
    acks: list[Ack] = field(default_factory=list)
    in_doubt: list[tuple[str, bytes]] = field(default_factory=list)  # sent, no answer: may or may not exist
    outcomes: list[Outcome] = field(default_factory=list)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(str(o.status) if o.status is not None else o.error or "?"
                       for o in self.outcomes if since <= o.started < until)

    def max_latency_s(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((o.latency_s for o in self.outcomes if since <= o.started < until), default=0.0)

    def timeouts(self) -> int:
        return sum(1 for o in self.outcomes if o.error == "TimeoutError")


class Writer:
    """Closed-loop clients POSTing idempotent writes until `stop` is set."""

    path: str = "/"
    ok_status: int = 201

    def __init__(self, base_url: str, api_key: str, *, concurrency: int, timeout_s: float, seed: int = 1,
                 replicas: tuple[str, ...] = ()) -> None:
        self.base_url = base_url
        self.urls = (base_url, *replicas)  # requests go round robin, as behind a load balancer
        self._turn = 0
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.log = TrafficLog()
        self.last_ack_started = 0.0
        self._acked = asyncio.Event()

    def make_body(self) -> bytes:
        raise NotImplementedError

    def result_id(self, response: Any) -> str:
        raise NotImplementedError

    async def acked_after(self, moment: float, deadline: float) -> bool:
        """Wait until a request sent after `moment` is acknowledged; False if `deadline` passes first."""
        while self.last_ack_started <= moment:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._acked.wait()
        return True

    async def run(self, stop: asyncio.Event) -> TrafficLog:
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session, stop) for _ in range(self.concurrency)))
        return self.log

    async def _client(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            key, body = uuid.uuid4().hex, self.make_body()
            url, self._turn = self.urls[self._turn % len(self.urls)], self._turn + 1
            started = time.monotonic()
            try:
                async with session.post(url + self.path, data=body, headers={"Idempotency-Key": key}) as response:
                    payload = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.log.outcomes.append(Outcome(started, time.monotonic() - started, None, type(exc).__name__))
                # Refused at connect: the request never reached a service. Anything later (reset, timeout)
                # may have committed without the answer reaching us: the client must retry with its key.
                if not isinstance(exc, aiohttp.ClientConnectorError):
                    self.log.in_doubt.append((key, body))
                # A real client backs off when the service is unreachable instead of spinning on refusals.
                await asyncio.sleep(0.05)
                continue
            self.log.outcomes.append(Outcome(started, time.monotonic() - started, status))
            if status == self.ok_status:
                self.log.acks.append(Ack(key, body, self.result_id(payload)))
                self.last_ack_started = max(self.last_ack_started, started)
                acked, self._acked = self._acked, asyncio.Event()
                acked.set()
            elif status >= 500:
                await asyncio.sleep(0.05)


class OrderWriter(Writer):
    """Online ship orders of 1-3 distinct SKUs, 1-3 units each; a third of them want the hot SKU."""

    path = "/v1/orders"

    def __init__(self, base_url: str, api_key: str, catalog: Catalog, **kw: Any) -> None:
        super().__init__(base_url, api_key, **kw)
        self.catalog = catalog

    def make_body(self) -> bytes:
        skus = self.catalog.sku_ids
        chosen = self.rng.sample(skus[1:], self.rng.randint(1, min(3, len(skus) - 1)))
        if self.rng.random() < 1 / 3:
            chosen[0] = HOT_SKU
        lines = [{"sku": sku, "qty": self.rng.randint(1, 3), "unit_price": "10.00"} for sku in chosen]
        return orjson.dumps({"channel": "online", "currency": "EUR", "lines": lines,
                             "fulfillment": {"type": "ship"}})

    def result_id(self, response: Any) -> str:
        return str(response["id"])


class LedgerWriter(Writer):
    """Small batches of reconciliation summaries appended as finance (the only organisation that may),
    each signed here with finance's member key, as finance's own tools sign theirs."""

    path = "/v1/ledger/entries"

    def __init__(self, *args: Any, signer: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.signer = signer  # ledger.identity.Identity of finance
        self.sent = 0

    def make_body(self) -> bytes:
        from ledger.signing import sign_submission

        self.sent += 1
        entries = [{"kind": "reconciliation_summary", "business_day": "2026-01-01", "drill_batch": self.sent,
                    "part": part} for part in range(self.rng.randint(1, 3))]
        return orjson.dumps({"entries": entries, "submission": sign_submission(self.signer, entries).as_json()})

    def result_id(self, response: Any) -> str:
        return ",".join(str(r["seq"]) for r in response["receipts"])


@dataclass
class ReadinessLog:
    samples: list[Outcome] = field(default_factory=list)


async def probe_readiness(url: str, stop: asyncio.Event, interval_s: float = 0.1,
                          timeout_s: float = 15.0) -> ReadinessLog:
    """GET /readyz every `interval_s` until `stop`: what an orchestrator's readiness probe would see.
    A probe starts on time even while an earlier one still waits for its answer (a readiness check
    during a frozen database takes its deadline to say 503), so short outages always hold some."""
    found = ReadinessLog()

    async def probe(session: aiohttp.ClientSession) -> None:
        started = time.monotonic()
        try:
            async with session.get(f"{url}/readyz") as response:
                await response.read()
                found.samples.append(Outcome(started, time.monotonic() - started, response.status))
        except (aiohttp.ClientError, TimeoutError) as exc:
            found.samples.append(Outcome(started, time.monotonic() - started, None, type(exc).__name__))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        probes: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            task = asyncio.create_task(probe(session))
            probes.add(task)
            task.add_done_callback(probes.discard)
            await asyncio.sleep(interval_s)
        await asyncio.gather(*probes)
    found.samples.sort(key=lambda s: s.started)
    return found
