"""The store associate's SKU page in the console (issue 13): how long the page takes at 200 pages/s,
and how soon a stock change reaches an open page while the mixed order load runs.

1. Page time: `USERS` store users (each at a store of the orders dataset) sign in through the console's
   own form; one client process then asks for /store/sku/{sku} open-loop at `PAGES_S` pages/s (a
   request leaves at its scheduled time whether or not earlier ones have answered, so a slow answer
   cannot hold the next ones back), round-robin over the users, random SKUs. Latency is measured by
   the client from the request's scheduled time to the last byte of the page (the console sends no
   X-Response-Time; on this one machine client and server share the cores). Each page is 4 API calls
   with the person's key: the SKU, its stock, nearby stores, online availability. Aim: p99 <= 30 ms.
2. Change -> open page: `STREAMS` pages hold /store/sku/{sku}/events open (the relay of inventory's
   stream), each for a SKU of its own that the order load never touches, so every event a page gets
   is the answer to one movement. A driver posts a receipt for each SKU in turn (one in flight per
   SKU) and times from the movement's 201 (committed) to the relay's `stock` event at that page,
   while the mixed order load (orders.mixed's workload, shop key) runs. Aim: p99 <= 200 ms.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import re
import time
import urllib.request
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import orjson

from benchmarks.loadgen import LoadSpec
from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.ecommerce_latency import _caught_up, parent_says
from benchmarks.scenarios.orders_data import orders_data
from benchmarks.scenarios.orders_mixed import MixedOrders
from services.console.users import create_user

AIM_PAGES_S, AIM_PAGE_P99_MS, AIM_CHANGE_P99_MS = 200, 30.0, 200.0
USERS, STREAMS = 8, 16
PAGE_RATES = (50, 100, AIM_PAGES_S)  # where the page stands below the aim's rate, too
PASSWORD = "bench store password 0123"
CSRF = re.compile(rb'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class ConsoleStoreScenario:
    name: str = "console.store_page"
    services: tuple[str, ...] = ("inventory", "orders", "ecommerce", "console")

    def run(self, ctx: Context) -> list[Record]:
        data = orders_data(ctx)
        seconds, warmup = (6.0, 1.0) if ctx.quick else (20.0, 3.0)
        stores = [f"bo-{i:02d}" for i in range(2, 2 + USERS)]
        ctx.dataset("console store users", lambda: asyncio.run(_users(ctx.stack.dsn, stores)))
        live_skus = ctx.dataset("console live SKUs", lambda: _live_skus(ctx, stores))
        started = time.perf_counter()
        asyncio.run(_caught_up(ctx.stack.dsn))  # the online figure is the projection's, after the seed
        ctx.setup[f"{self.name}: projection catch-up"] = round(time.perf_counter() - started, 1)
        cookies = asyncio.run(_sign_in_all(ctx.url("console"), [f"bench-{s}" for s in stores]))

        records = [self._pages(ctx, cookies, data.skus, rate, seconds, warmup) for rate in PAGE_RATES]

        live = _Child(_live_main, ctx.url("console"), ctx.url("inventory"), ctx.key("admin"), cookies,
                      live_skus, stores, wait_for_go=True)
        spec = LoadSpec(ctx.url("orders"), MixedOrders(data.skus), 16, seconds, warmup, api_key=ctx.key("shop"),
                        ok_statuses=(201,))
        label = "order placement under console SSE pages, mixed 1-5 lines c=16"
        live.send("go")
        orders = ctx.load(spec, label)
        live.send("stop")
        changes = live.result()
        gaps = array("d")
        gaps.frombytes(changes["latencies"])
        orders_record = Record.from_load(label, orders)
        orders_record.unit = "orders/s"
        change_record = Record(
            scenario=f"stock change -> open console page ({STREAMS} pages)", throughput=len(gaps) / changes["seconds"],
            unit="changes/s", p50_ms=_percentile_ms(gaps, 0.5), p99_ms=_percentile_ms(gaps, 0.99),
            extra={"samples": len(gaps), "max_ms": _percentile_ms(gaps, 1.0), "missed": changes["missed"],
                   "orders_s": round(orders.throughput, 1),
                   "measured": "client: the movement's 201 (committed) -> the relay's stock event",
                   "aim": f"p99 <= {AIM_CHANGE_P99_MS:.0f} ms under the mixed order load"})
        change_record.extra["aim_met"] = bool(change_record.p99_ms is not None
                                              and change_record.p99_ms <= AIM_CHANGE_P99_MS and not changes["missed"])
        return [*records, orders_record, change_record]

    def _pages(self, ctx: Context, cookies: list[str], skus: list[str], rate: int, seconds: float,
               warmup: float) -> Record:
        label = f"store SKU page, open loop {rate} pages/s"
        if ctx.profiler is not None:  # --profile: this load is not ctx.load's, so it starts the sampler itself
            pids = {name: service.process.pid for name, service in ctx.stack.services.items()}
            ctx.profiler.start(label, pids, warmup + seconds)
        before = ctx.meter.snapshot()
        pages = _Child(_pages_main, ctx.url("console"), cookies, skus, rate, seconds, warmup).result()
        cpu = ctx.meter.cores_since(before)
        if ctx.profiler is not None:
            ctx.profiles[label] = ctx.profiler.finish()
        latencies = array("d")
        latencies.frombytes(pages["latencies"])
        record = Record(
            scenario=label, throughput=pages["served_s"], unit="pages/s",
            p50_ms=_percentile_ms(latencies, 0.5), p99_ms=_percentile_ms(latencies, 0.99),
            extra={"statuses": pages["statuses"], "errors": pages["errors"], "late_starts": pages["late"],
                   "users": USERS, "cpu_cores": cpu, "measured": "client: scheduled send -> last byte"})
        if rate == AIM_PAGES_S:
            record.extra["aim"] = f"p99 <= {AIM_PAGE_P99_MS:.0f} ms at {AIM_PAGES_S} pages/s"
            record.extra["aim_met"] = bool(record.p99_ms is not None and record.p99_ms <= AIM_PAGE_P99_MS
                                           and record.throughput >= 0.98 * AIM_PAGES_S)
        return record


# --- set-up -------------------------------------------------------------------------------------


async def _users(dsn: str, stores: list[str]) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        for store in stores:
            await create_user(conn, username=f"bench-{store}", display_name=f"Bench {store}", role="store",
                              location_id=store, password=PASSWORD)
    finally:
        await conn.close()
    return len(stores)


def _live_skus(ctx: Context, stores: list[str]) -> list[str]:
    """SKUs of the live pages: stocked at one user's store each, never ordered by the mixed load."""
    skus = []
    for i in range(STREAMS):
        sku, store = f"LIVE-{i:03d}", stores[i % len(stores)]
        _admin(ctx, "PUT", "inventory", f"/v1/skus/{sku}", {"name": f"Live page {i}", "price": "10.00",
                                                           "currency": "EUR"})
        _admin(ctx, "POST", "inventory", "/v1/stock/movements", {"sku": sku, "location_id": store,
                                                                 "kind": "receipt", "qty": 10}, f"live-seed-{sku}")
        skus.append(sku)
    return skus


def _admin(ctx: Context, method: str, service: str, path: str, body: dict[str, Any], idem: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {ctx.key('admin')}", "Content-Type": "application/json"}
    if idem:
        headers["Idempotency-Key"] = idem
    request = urllib.request.Request(ctx.url(service) + path, method=method, data=orjson.dumps(body), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


async def _sign_in_all(console: str, usernames: list[str]) -> list[str]:
    """Each user signs in through the form, as a browser does; their session cookies, for the clients."""
    import aiohttp

    cookies = []
    for username in usernames:
        jar = aiohttp.CookieJar(unsafe=True)  # the console is on 127.0.0.1
        async with aiohttp.ClientSession(console, cookie_jar=jar) as session:
            async with session.get("/sign-in") as page:
                token = CSRF.search(await page.read())
            assert token, "no CSRF token on the sign-in page"
            async with session.post("/sign-in", data={"username": username, "password": PASSWORD,
                                                      "csrf_token": token.group(1).decode()},
                                    allow_redirects=False) as resp:
                if resp.status != 303:
                    raise RuntimeError(f"sign-in of {username} answered {resp.status}")
            cookie = next((c for c in jar if c.key == "omnistock_session"), None)
            assert cookie is not None, "no session cookie after sign-in"
            cookies.append(f"omnistock_session={cookie.value}")
    return cookies


# --- client processes ---------------------------------------------------------------------------


class _Child:
    """A spawned client process that reports one dict; with `wait_for_go` it first says "ready"."""

    def __init__(self, target: Any, *args: Any, wait_for_go: bool = False) -> None:
        context = mp.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(target=_child, args=(target, args, child_end), daemon=True)
        self._process.start()
        child_end.close()
        if wait_for_go:
            self._expect("ready", 60)

    def _expect(self, what: str, timeout_s: float) -> Any:
        if not self._pipe.poll(timeout_s):
            raise TimeoutError(f"the console client did not say {what}")
        message = self._pipe.recv()
        if isinstance(message, dict) and "error" in message:
            raise RuntimeError(f"console client failed: {message['error']}")
        return message

    def send(self, message: str) -> None:
        self._pipe.send(message)

    def result(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._expect("its result", 300)
            return result
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
            self._pipe.close()


def _child(target: Any, args: tuple[Any, ...], pipe: Connection) -> None:
    try:
        pipe.send(asyncio.run(target(*args, pipe)))
    except Exception as exc:  # the parent must hear why
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


async def _pages_main(console: str, cookies: list[str], skus: list[str], rate: int, seconds: float,
                      warmup: float, pipe: Connection) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(13)
    latencies: array[float] = array("d")
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    late = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(console, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(at: float, cookie: str, sku: str, measured: bool) -> None:
            try:
                async with session.get(f"/store/sku/{sku}", headers={"Cookie": cookie},
                                       allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                if measured:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if measured:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    done_at[0] = time.perf_counter()
                    latencies.append(done_at[0] - at)

        tasks = []
        done_at = [0.0]
        start = time.perf_counter() + 0.2
        total = int(rate * (warmup + seconds))
        for i in range(total):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1  # the client itself fell behind its schedule (the figures then flatter the server)
            tasks.append(asyncio.create_task(one(at, cookies[i % len(cookies)], rng.choice(skus),
                                                 i >= rate * warmup)))
        await asyncio.gather(*tasks)
    # Pages served per second: the measured pages over the time from the first one's scheduled send to
    # the last one's answer (below the offered rate when the stack cannot keep up and answers pile up).
    window = done_at[0] - (start + warmup)
    served_s = len(latencies) / window if window > 0 else 0.0
    return {"latencies": latencies.tobytes(), "statuses": statuses, "errors": errors, "late": late,
            "served_s": round(served_s, 1)}


async def _live_main(console: str, inventory: str, admin_key: str, cookies: list[str], skus: list[str],
                     stores: list[str], pipe: Connection) -> dict[str, Any]:
    import aiohttp

    arrived: dict[str, asyncio.Queue[float]] = {sku: asyncio.Queue() for sku in skus}
    opened = {sku: asyncio.Event() for sku in skus}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(console, timeout=timeout) as pages, \
            aiohttp.ClientSession(inventory, headers={"Authorization": f"Bearer {admin_key}"}) as api:

        async def watch(index: int, sku: str) -> None:
            async with pages.get(f"/store/sku/{sku}/events", headers={"Cookie": cookies[index % len(cookies)],
                                                                      "Accept": "text/event-stream"}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the relay answered {resp.status}")
                async for line in resp.content:
                    opened[sku].set()
                    if line.startswith(b"event: stock"):
                        arrived[sku].put_nowait(time.perf_counter())

        watchers = [asyncio.create_task(watch(i, sku)) for i, sku in enumerate(skus)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened.values())), 30)
        await asyncio.sleep(0.5)  # every relay's upstream stream is open
        pipe.send("ready")
        assert await parent_says(pipe) == "go"
        gaps: array[float] = array("d")
        missed = 0
        stop = asyncio.Event()

        async def drive(index: int, sku: str) -> None:
            nonlocal missed
            n = 0
            while not stop.is_set():
                n += 1
                while not arrived[sku].empty():  # a late answer to an earlier movement is not this one's
                    arrived[sku].get_nowait()
                async with api.post("/v1/stock/movements", json={
                        "sku": sku, "location_id": stores[index % len(stores)], "kind": "receipt", "qty": 1},
                        headers={"Idempotency-Key": f"live-{sku}-{time.time_ns()}-{n}"}) as resp:
                    await resp.read()
                    committed = time.perf_counter()
                if resp.status != 201:
                    raise RuntimeError(f"a movement answered {resp.status}")
                try:
                    received = await asyncio.wait_for(arrived[sku].get(), 5.0)
                    gaps.append(max(0.0, received - committed))
                except TimeoutError:
                    missed += 1
                await asyncio.sleep(0.1)

        began = time.perf_counter()
        drivers = [asyncio.create_task(drive(i, sku)) for i, sku in enumerate(skus)]
        assert await parent_says(pipe) == "stop"
        stop.set()
        await asyncio.gather(*drivers)
        elapsed = time.perf_counter() - began
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return {"latencies": gaps.tobytes(), "missed": missed, "seconds": elapsed}


def _percentile_ms(values: array[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)
