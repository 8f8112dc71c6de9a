"""Idle SSE clients held by one ecommerce process (issue 4): open N availability streams from two
client processes of our own, hold them idle, sample the service's RSS (psutil), then close them all
and check the service lets go of every connection. Aim: 10,000 clients within 500 MB RSS.

Each client process raises its RLIMIT_NOFILE soft limit to the hard limit; when the hard limits
(ours or the service's) leave no room for N connections, the scenario opens as many as they allow
and the record says so (`wanted`, `fd_limits`).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import psutil

from benchmarks.scenarios.base import Context, Record
from benchmarks.scenarios.ecommerce_latency import parent_says

AIM_CLIENTS, AIM_RSS_MB = 10_000, 500.0
PROCESSES = 2
OPENING = 200  # streams being opened at once per client process (the listen backlog is finite)
FD_SPARE = 256  # descriptors left for everything else in a process


@dataclass(frozen=True)
class EcommerceIdleStreamsScenario:
    name: str = "ecommerce.sse_idle"
    services: tuple[str, ...] = ("ecommerce",)

    def run(self, ctx: Context) -> list[Record]:
        # Quick: half the clients, so the scenario stays near 10 s (opening runs at ~1,100 streams/s).
        target, hold_s = (AIM_CLIENTS // 2, 2.0) if ctx.quick else (AIM_CLIENTS, 10.0)
        service = psutil.Process(ctx.stack.services["ecommerce"].process.pid)
        port = ctx.stack.services["ecommerce"].port
        service_fds = _service_fd_room(service)
        own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        per_process_room = max(0, own_hard - FD_SPARE)
        wanted = min(target, service_fds, PROCESSES * per_process_room)

        baseline_conns = _established(service, port)
        baseline_rss = service.memory_info().rss
        shares = [wanted // PROCESSES + (1 if i < wanted % PROCESSES else 0) for i in range(PROCESSES)]
        context = mp.get_context("spawn")
        pipes: list[Connection] = []
        children = []
        started = time.perf_counter()
        try:
            for share in shares:
                parent_end, child_end = context.Pipe()
                child = context.Process(target=_holder_main, args=(ctx.url("ecommerce"), ctx.key("shop"), share,
                                                                   child_end), daemon=True)
                child.start()
                child_end.close()
                pipes.append(parent_end)
                children.append(child)
            opened = [_reply(pipe, 300) for pipe in pipes]
            open_s = time.perf_counter() - started
            held_client = sum(o["held"] for o in opened)
            samples, held_server = [], []
            hold_until = time.monotonic() + hold_s
            while True:
                samples.append(service.memory_info().rss)
                held_server.append(_established(service, port) - baseline_conns)
                if time.monotonic() >= hold_until:
                    break
                time.sleep(min(1.0, max(0.0, hold_until - time.monotonic())))
            for pipe in pipes:
                pipe.send("close")
            still_open = [_reply(pipe, 120) for pipe in pipes]
        finally:
            for child in children:
                child.join(timeout=30)
                if child.is_alive():
                    child.kill()
        left, closed_s = _wait_released(service, port, baseline_conns)
        rss_after = service.memory_info().rss

        peak = max(samples)
        mb = 2**20
        return [Record(
            scenario=f"idle SSE clients held by one ecommerce process (wanted {wanted:,})",
            throughput=float(min(held_client, max(held_server))), unit="clients",
            extra={
                "wanted": wanted, "aim_clients": AIM_CLIENTS, "held_by_clients": held_client,
                "held_by_service": max(held_server), "open_errors": _merged(o["errors"] for o in opened),
                "open_s": round(open_s, 1), "hold_s": hold_s,
                "rss_mb_before": round(baseline_rss / mb, 1), "rss_mb_peak": round(peak / mb, 1),
                "rss_mb_after_close": round(rss_after / mb, 1),
                "kb_per_client": round((peak - baseline_rss) / 1024 / max(1, max(held_server)), 1),
                "lost_while_held": sum(o["ended"] for o in still_open),
                "connections_left_after_close": left, "release_s": round(closed_s, 1),
                "fd_limits": {"service": service_fds, "client_soft_before": own_soft, "client_hard": own_hard,
                              "client_processes": PROCESSES},
                "aim": f"{AIM_CLIENTS:,} clients within {AIM_RSS_MB:.0f} MB RSS",
                "aim_met": bool(min(held_client, max(held_server)) >= AIM_CLIENTS and peak / mb <= AIM_RSS_MB),
            },
        )]


def _service_fd_room(service: psutil.Process) -> int:
    """How many more connections the service's descriptor limit allows (raised to its hard limit if lower)."""
    soft, hard = service.rlimit(psutil.RLIMIT_NOFILE)
    if soft < hard:
        try:
            service.rlimit(psutil.RLIMIT_NOFILE, (hard, hard))  # what `ulimit -n` would have given it
            soft = hard
        except (psutil.Error, OSError):
            pass
    return max(0, soft - service.num_fds() - FD_SPARE)


def _established(service: psutil.Process, port: int) -> int:
    return sum(1 for c in service.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def _wait_released(service: psutil.Process, port: int, baseline: int, timeout_s: float = 30.0) -> tuple[int, float]:
    started = time.monotonic()
    while (left := _established(service, port) - baseline) > 0 and time.monotonic() - started < timeout_s:
        time.sleep(0.2)
    return max(0, left), time.monotonic() - started


def _merged(errors: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in errors:
        for name, count in part.items():
            total[name] = total.get(name, 0) + count
    return total


def _reply(pipe: Connection, timeout_s: float) -> dict[str, Any]:
    if not pipe.poll(timeout_s):
        raise TimeoutError("an SSE holder process did not answer")
    message: dict[str, Any] = pipe.recv()
    if "error" in message:
        raise RuntimeError(f"SSE holder failed: {message['error']}")
    return message


# --- the holder process -----------------------------------------------------------------------------


def _holder_main(base_url: str, api_key: str, count: int, pipe: Connection) -> None:
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            import uvloop

            uvloop.run(_hold(base_url, api_key, min(count, hard - FD_SPARE), pipe))
        except ImportError:
            asyncio.run(_hold(base_url, api_key, min(count, hard - FD_SPARE), pipe))
    except Exception as exc:  # the parent must hear why
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


async def _hold(base_url: str, api_key: str, count: int, pipe: Connection) -> None:
    import aiohttp

    errors: dict[str, int] = {}
    ended = 0
    gate = asyncio.Semaphore(OPENING)
    opened_all = asyncio.Event()
    close = asyncio.Event()
    held = 0
    pending = count

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {api_key}"}) as session:

        async def client() -> None:
            nonlocal held, pending, ended
            counted = False
            try:
                async with gate:
                    response = await session.get("/v1/availability/stream", headers={"Accept": "text/event-stream"})
                    if response.status != 200:
                        response.release()
                        raise RuntimeError(f"HTTP {response.status}")
                    await response.content.readuntil(b"\n\n")  # the stream's `retry:` preamble
                held += 1
                counted = True
            except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            finally:
                pending -= 1
                if pending == 0:
                    opened_all.set()
            async with response:
                reader = asyncio.create_task(_drain(response))
                closing = asyncio.create_task(close.wait())
                await asyncio.wait({reader, closing}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done() and counted:
                    ended += 1  # the server ended a stream we were holding
                reader.cancel()
                closing.cancel()
                response.close()

        tasks = [asyncio.create_task(client()) for _ in range(count)]
        if count == 0:
            opened_all.set()
        await opened_all.wait()
        pipe.send({"held": held, "errors": errors})
        await parent_says(pipe)
        close.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        pipe.send({"ended": ended})


async def _drain(response: Any) -> None:
    while await response.content.readany():  # heartbeats (or events) while idle
        pass
