"""Client side of the replicas drill: what a load balancer in front of two instances of each service sees.

    OrderLifecycle  orders placed round robin across the orders instances; some sent to both at once
                    with one Idempotency-Key (a client retrying through the other instance); then
                    fulfilled or cancelled through the other instance, or left unpaid for the sweepers
    FinanceCommits  reconciliation runs, each committed through both finance instances at once
    SseReader       one stream read from one instance, from a given event on, every id kept in order
    WebhookReceiver the subscribed endpoint: records each request's arrival and answer, fails some
                    first attempts on purpose (the only retries it may then see)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import psutil
from aiohttp import web

from benchmarks.drills.traffic import Ack, Catalog, OrderWriter, Outcome, TrafficLog
from services.ecommerce import domain as ecommerce_domain
from shared.embedded_db import free_port


def _json_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


@dataclass
class LifecycleLog:
    """What the order clients saw beyond the placements' TrafficLog."""

    orders: TrafficLog = field(default_factory=TrafficLog)
    # Keys sent to both instances at once: every answer that named an order, per key.
    twins: dict[str, list[str]] = field(default_factory=dict)
    actions: Counter[str] = field(default_factory=Counter)  # "fulfill 200", "cancel 409", "left to expire"
    placed_by: Counter[str] = field(default_factory=Counter)  # acknowledgements per instance URL
    retried: dict[str, str] = field(default_factory=dict)  # in-doubt key -> the order its retry named


class OrderLifecycle:
    """Closed-loop clients: place an order on the next instance, then act on it through the other.

    What each placement does follows its turn, not chance, so even a short run has every kind: every
    fifth is sent to both instances at once with one key; of ten in a row three are fulfilled, one is
    cancelled and six are left unpaid for the sweepers."""

    TWIN_EVERY = 5
    FULFIL, CANCEL = {1, 4, 7}, {9}

    def __init__(self, urls: list[str], api_key: str, catalog: Catalog, *, concurrency: int, timeout_s: float,
                 seed: int = 7) -> None:
        self.urls, self.api_key, self.concurrency = urls, api_key, concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.bodies = OrderWriter(urls[0], api_key, catalog, concurrency=1, timeout_s=timeout_s, seed=seed)
        self.log = LifecycleLog()
        self._turn = 0

    async def run(self, stop: asyncio.Event) -> LifecycleLog:
        async with aiohttp.ClientSession(headers=_json_headers(self.api_key), timeout=self.timeout,
                                         connector=aiohttp.TCPConnector(limit=4 * self.concurrency)) as session:
            await asyncio.gather(*(self._client(session, stop) for _ in range(self.concurrency)))
        return self.log

    async def _client(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set():
            turn, self._turn = self._turn, self._turn + 1
            first = turn % len(self.urls)
            other = self.urls[(first + 1) % len(self.urls)]
            key, body = uuid.uuid4().hex, self.bodies.make_body()
            targets = self.urls if turn % self.TWIN_EVERY == 0 else [self.urls[first]]
            answers = await asyncio.gather(*(self._place(session, url, key, body) for url in targets))
            ids = [order_id for order_id in answers if order_id is not None]
            if len(targets) > 1:
                self.log.twins[key] = ids
            if not ids:
                await asyncio.sleep(0.02)
                continue
            if turn % 10 in self.FULFIL:
                await self._act(session, other, ids[0], "fulfill")
            elif turn % 10 in self.CANCEL:
                await self._act(session, other, ids[0], "cancel")
            else:
                self.log.actions["left to expire"] += 1

    async def _place(self, session: aiohttp.ClientSession, url: str, key: str, body: bytes) -> str | None:
        log = self.log.orders
        started = time.monotonic()
        try:
            async with session.post(f"{url}/v1/orders", data=body, headers={"Idempotency-Key": key}) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.outcomes.append(Outcome(started, time.monotonic() - started, None, type(exc).__name__))
            log.in_doubt.append((key, body))
            return None
        log.outcomes.append(Outcome(started, time.monotonic() - started, status))
        if status not in (200, 201):
            return None
        log.acks.append(Ack(key, body, str(payload["id"])))
        self.log.placed_by[url] += 1
        return str(payload["id"])

    async def _act(self, session: aiohttp.ClientSession, url: str, order_id: str, action: str) -> None:
        try:
            async with session.post(f"{url}/v1/orders/{order_id}/{action}") as response:
                await response.read()
                self.log.actions[f"{action} {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.log.actions[f"{action} {type(exc).__name__}"] += 1


@dataclass
class CommitLog:
    runs: list[int] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)  # "reconcile 201", "commit 200", ...
    unexpected: list[str] = field(default_factory=list)


class FinanceCommits:
    """One finance client per instance: every `every_s` a reconciliation run of the day's online sales on
    its instance, then the run's commit sent to every finance instance at once. Two ledger appenders in
    two processes commit one run, and the runs of the clients overlap: a newer run of the day supersedes
    the one another client is committing (409 for a commit that comes after), and both hold the same sales."""

    def __init__(self, urls: list[str], api_key: str, *, every_s: float, timeout_s: float) -> None:
        self.urls, self.api_key, self.every_s = urls, api_key, every_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.log = CommitLog()

    async def run(self, stop: asyncio.Event) -> CommitLog:
        async with aiohttp.ClientSession(headers=_json_headers(self.api_key), timeout=self.timeout) as session:
            await asyncio.gather(*(self._client(session, url, stop) for url in self.urls))
            await self.round(session, self.urls[0])  # the last sales too
        return self.log

    async def _client(self, session: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.round(session, url)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)

    async def round(self, session: aiohttp.ClientSession, url: str) -> None:
        # The drill's locations keep UTC, so today's sales are today's business day.
        body = {"business_day": datetime.now(UTC).date().isoformat(), "channel": "online"}
        status, run = await self._post(session, f"{url}/v1/reconciliations", body)
        self.log.outcomes[f"reconcile {status}"] += 1
        if status != 201:
            self.log.unexpected.append(f"reconciliation on {url}: {status} {run}")
            return
        self.log.runs.append(run["id"])
        commits = await asyncio.gather(*(
            self._post(session, f"{u}/v1/reconciliations/{run['id']}/commit", {"override_reason": "replica drill"})
            for u in self.urls))
        for u, (status, answer) in zip(self.urls, commits, strict=True):
            self.log.outcomes[f"commit {status}"] += 1
            superseded = status == 409 and str(answer.get("type", "")).endswith("/run-superseded")
            if status != 200 and not superseded:
                self.log.unexpected.append(f"commit of run {run['id']} on {u}: {status} {answer}")

    async def _post(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int | str, Any]:
        try:
            async with session.post(url, json=body) as response:
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__, None


class SseReader:
    """One event stream resumed after `after_id`; the ids it delivered, in order. With several URLs it
    hangs up every `switch_every` events and resumes on the next instance from its Last-Event-ID, as a
    client behind a load balancer without sticky sessions does."""

    def __init__(self, urls: list[str], api_key: str, after_id: int, switch_every: int = 0) -> None:
        self.urls, self.api_key, self.after_id, self.switch_every = urls, api_key, after_id, switch_every
        self.ids: list[int] = []
        self.connections = 0
        self.error: str | None = None

    async def run(self, stop: asyncio.Event) -> SseReader:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            while not stop.is_set():
                url = self.urls[self.connections % len(self.urls)]
                self.connections += 1
                last = self.ids[-1] if self.ids else self.after_id
                try:
                    async with session.get(url, headers={"Last-Event-ID": str(last)}) as response:
                        if response.status != 200:
                            self.error = f"{url}: {response.status} {await response.text()}"
                            return self
                        await self._read(response, stop)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.error = f"{url}: {type(exc).__name__}"
                    await asyncio.sleep(0.1)
        return self

    async def _read(self, response: aiohttp.ClientResponse, stop: asyncio.Event) -> None:
        reading = asyncio.ensure_future(self._lines(response))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (reading, stopping):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading

    async def _lines(self, response: aiohttp.ClientResponse) -> None:
        count = 0
        async for raw in response.content:
            if raw.startswith(b"id: "):
                self.ids.append(int(raw[4:].strip()))
                count += 1
                if count == self.switch_every:
                    return  # hang up; run() resumes on the next instance


@dataclass
class Received:
    delivery_id: int
    event_id: int
    subscription: str  # the URL path the subscription points at
    key: str  # the SKU
    attempt: int
    arrived: float  # time.monotonic()
    answered: float
    status: int
    signed: bool  # the signature verified with the subscription's secret


class WebhookReceiver:
    """The shop's endpoint for every subscription (one path per subscription). Fails the first attempt of
    `fail_every`-th delivery (the first included) with a 503: those, and only those, may arrive more than once."""

    def __init__(self, secret: str, *, fail_every: int = 5, hold_s: float = 0.005) -> None:
        self.secret, self.fail_every, self.hold_s = secret, fail_every, hold_s
        self.port = free_port()
        self.received: list[Received] = []
        self.instances: dict[str, int] = {}  # e-commerce instance name -> pid, to tell who sent what
        self.senders: Counter[str] = Counter()
        self._owners: dict[int, str] = {}  # the sender's local port -> instance name
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{subscription}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def failed_on_purpose(self, delivery_id: int, attempt: int) -> bool:
        return attempt == 1 and delivery_id % self.fail_every == 1

    def sender_of(self, port: int) -> str:
        """Which instance holds the connection from `port` (keep-alive: looked up once per connection)."""
        if port not in self._owners:
            for name, pid in self.instances.items():
                with contextlib.suppress(psutil.Error):
                    for conn in psutil.Process(pid).net_connections(kind="tcp"):
                        if conn.raddr and conn.raddr.port == self.port:
                            self._owners[conn.laddr.port] = name
        return self._owners.get(port, "unknown")

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.senders[self.sender_of(peer[1])] += 1
        body = await request.read()
        headers = request.headers
        delivery_id, attempt = int(headers["X-Omnistock-Delivery-Id"]), int(headers["X-Omnistock-Attempt"])
        expected = ecommerce_domain.signature(self.secret, int(headers["X-Omnistock-Timestamp"]), body)
        # A little time inside each request, so two senders of one delivery or one queue would overlap.
        await asyncio.sleep(self.hold_s)
        status = 503 if self.failed_on_purpose(delivery_id, attempt) else 200
        self.received.append(Received(
            delivery_id, int(headers["X-Omnistock-Event-Id"]), request.match_info["subscription"],
            orjson.loads(body)["data"]["sku"], attempt, arrived, time.monotonic(), status,
            headers.get("X-Omnistock-Signature") == expected))
        return web.Response(status=status)
