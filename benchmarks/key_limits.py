"""`python -m benchmarks.key_limits`: what the limits per key add to each request, in CPU time.

Taking a token (TokenBuckets.take, with the clock read) and setting the RateLimit headers on a response,
next to building the response itself; best of five runs of process time, so a busy machine's waits
do not count (its cache misses still do).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from multidict import istr

from shared.http.rate_limit import TokenBuckets
from shared.settings import DEFAULT_KEY_LIMITS, KeyLimit

RUNS, CALLS = 5, 300_000


def cpu_ns(work: Callable[[], object], calls: int = CALLS) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.process_time()
        for _ in range(calls):
            work()
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e9


def main() -> None:
    buckets = TokenBuckets({**DEFAULT_KEY_LIMITS, "shop": KeyLimit(per_s=1e9, burst=10**9, streams=8)})
    for key_id in range(1000):  # a thousand keys in the table, as many as a busy shop's tills and tools
        buckets.take(key_id, "shop", time.monotonic())
    response = web.Response(body=b"{}", content_type="application/json")
    policy, rate = istr("RateLimit-Policy"), istr("RateLimit")

    def headers() -> None:
        values = buckets.headers("shop", 12.0)
        assert values is not None
        response.headers[policy], response.headers[rate] = values

    figures = {
        "take a token": cpu_ns(lambda: buckets.take(7, "shop", time.monotonic())),
        "RateLimit headers": cpu_ns(headers),
        "web.Response() for scale": cpu_ns(lambda: web.Response(body=b"{}", content_type="application/json"),
                                           CALLS // 5),
    }
    for name, ns in figures.items():
        print(f"{name:>26}: {ns:7.0f} ns CPU")  # noqa: T201 - a benchmark's report is its output


if __name__ == "__main__":
    main()
