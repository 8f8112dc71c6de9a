"""The load generator: closed-loop aiohttp clients in processes of their own.

Each client process keeps `concurrency` keep-alive connections busy for a warm-up and then a measured
window, timing every request from send to last body byte. Workloads are small picklable objects that
make the next request; they are built in the parent and rebuilt in each (spawned) child.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

from benchmarks.cpu import CpuMeter


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None


class Workload(Protocol):
    """Makes requests; `start` runs once in each client process before the first request."""

    def start(self, rng: random.Random, worker_id: str) -> None: ...

    def next(self) -> Request: ...


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_s: array[float]  # of successful requests inside the measured window
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used per role during the window
    acknowledged: list[str] = field(default_factory=list)  # with LoadSpec.collect_ids: "id" of every 201

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    workload: Any  # a Workload; Any because Protocols are not picklable types
    concurrency: int
    duration_s: float
    warmup_s: float = 2.0
    processes: int = 1
    api_key: str | None = None
    timeout_s: float = 30.0
    ok_statuses: tuple[int, ...] = (200, 201)
    # Keep the "id" of every 201 answer, warm-up included, so the scenario can check afterwards that
    # every acknowledged write is in the database.
    collect_ids: bool = False


def run_load(spec: LoadSpec, meter: CpuMeter | None = None) -> LoadResult:
    """Drive `spec` from `spec.processes` child processes; measure servers' CPU over the same window."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of the parent's state, no forked locks
    pipes: list[Connection] = []
    children = []
    for index in range(spec.processes):
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=_child_main, args=(spec, index, child_end), daemon=True)
        child.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(child)
    try:
        for pipe in pipes:  # each child says "measuring" when its warm-up ends
            _expect(pipe.recv(), "measuring")
        snapshot = meter.snapshot() if meter else None
        results = [pipe.recv() for pipe in pipes]
        cpu = meter.cores_since(snapshot) if meter and snapshot else {}
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    return _merge(results, cpu)


def _expect(message: object, what: str) -> None:
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(f"load generator failed: {message['error']}")
    if message != what:
        raise RuntimeError(f"load generator said {message!r}, expected {what!r}")


def _merge(results: list[dict[str, Any]], cpu: dict[str, float]) -> LoadResult:
    for result in results:
        if "error" in result:
            raise RuntimeError(f"load generator failed: {result['error']}")
    latencies: array[float] = array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    acknowledged: list[str] = []
    client_cores = 0.0
    for result in results:
        acknowledged.extend(result["acknowledged"])
        latencies.frombytes(result["latencies"])
        statuses.update(result["statuses"])
        errors.update(result["errors"])
        client_cores += result["cpu_s"] / result["seconds"]
    seconds = max(result["seconds"] for result in results)
    requests = sum(statuses.values()) + sum(errors.values())
    if "machine busy" in cpu:
        roles = sum(v for k, v in cpu.items() if k != "machine busy") + client_cores
        cpu = {**cpu, "clients": round(client_cores, 2), "other": round(max(0.0, cpu["machine busy"] - roles), 2)}
    return LoadResult(requests, seconds, latencies, statuses, errors, cpu, acknowledged)


def _child_main(spec: LoadSpec, index: int, pipe: Connection) -> None:
    try:
        try:
            import uvloop

            result = uvloop.run(_drive(spec, index, pipe))
        except ImportError:
            result = asyncio.run(_drive(spec, index, pipe))
        pipe.send(result)
    except Exception as exc:  # the parent must hear why, or it waits forever
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


async def _drive(spec: LoadSpec, index: int, pipe: Connection) -> dict[str, Any]:
    import aiohttp
    import orjson

    workload = spec.workload
    workload.start(random.Random(f"{index}-{os.getpid()}"), f"{os.getpid()}-{index}")
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    latencies: array[float] = array("d")
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    acknowledged: list[str] = []
    connector = aiohttp.TCPConnector(limit=spec.concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    async with aiohttp.ClientSession(spec.base_url, connector=connector, timeout=timeout, headers=headers) as session:
        measure_from = time.perf_counter() + spec.warmup_s
        stop_at = measure_from + spec.duration_s

        async def client() -> None:
            while (started := time.perf_counter()) < stop_at:
                request = workload.next()
                try:
                    async with session.request(request.method, request.path, data=request.body,
                                               headers=request.headers) as response:
                        body = await response.read()
                        status = response.status
                    if spec.collect_ids and status == 201:
                        acknowledged.append(orjson.loads(body)["id"])
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if started >= measure_from:
                        errors[type(exc).__name__] += 1
                    continue
                if started >= measure_from:
                    statuses[status] += 1
                    if status in spec.ok_statuses:
                        latencies.append(time.perf_counter() - started)

        async def announce() -> tuple[float, float]:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            pipe.send("measuring")
            return time.perf_counter(), _own_cpu_s()

        clients = [asyncio.create_task(client()) for _ in range(spec.concurrency)]
        window_start, cpu_start = await announce()
        await asyncio.gather(*clients)
        seconds = time.perf_counter() - window_start
        cpu_s = _own_cpu_s() - cpu_start
    return {"latencies": latencies.tobytes(), "statuses": dict(statuses), "errors": dict(errors),
            "seconds": seconds, "cpu_s": cpu_s, "acknowledged": acknowledged}


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system
