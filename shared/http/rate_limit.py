"""Limits per API key, held in each service process: a token bucket of requests, a count of live streams.

The bucket of a key holds up to `burst` tokens and refills at `per_s` tokens a second; each request
takes one, and a request that finds less than one is refused with 429 `rate-limited` and the whole
seconds until a token is back (Retry-After). It is checked right after authentication, so unknown
keys (401) never get a bucket and the number of buckets is bounded by the keys in the database; the
structure is bounded anyway (MAX_BUCKETS, least recently used out first: a bucket idle for
burst/per_s seconds is full, the same as none).

Nothing here reads a clock itself: callers pass `now` (time.monotonic() in the app), so tests refill a
bucket by moving a number. Counters live in one process: N replicas behind a balancer let a key send
up to N times its rate (see README "Limits").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from shared.errors import Problem
from shared.settings import KeyLimit

MAX_BUCKETS = 10_000  # keys active within one refill time per process; past it the idlest bucket goes


class RateLimited(Problem):
    status, code, title = 429, "rate-limited", "Too many requests for this API key"

    def __init__(self, retry_after_s: int, limit: KeyLimit) -> None:
        super().__init__(f"this key may send {limit.burst} requests at once and {limit.per_s:g} a second; "
                         f"retry after {retry_after_s} s", retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s
        self.limit = limit

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s), **rate_headers(self.limit, 0.0)}


class TooManyStreams(Problem):
    status, code, title = 429, "too-many-streams", "Too many live event streams for this API key"


def policy_header(limit: KeyLimit) -> str:
    """RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers): the burst, and the seconds a drained
    bucket takes to fill again."""
    return f'"per-key";q={limit.burst};w={math.ceil(limit.burst / limit.per_s)}'


def rate_headers(limit: KeyLimit, tokens: float, policy: str | None = None) -> dict[str, str]:
    """RateLimit-Policy, and RateLimit: whole requests left now and the seconds until the bucket is full."""
    return {"RateLimit-Policy": policy or policy_header(limit),
            "RateLimit": f'"per-key";r={int(tokens)};t={math.ceil((limit.burst - tokens) / limit.per_s)}'}


class TokenBuckets:
    """One token bucket per API key id; `take` on every authenticated request (a few hundred ns)."""

    def __init__(self, limits: Mapping[str, KeyLimit], max_buckets: int = MAX_BUCKETS) -> None:
        self._limits = {role: limit for role, limit in limits.items() if limit.per_s > 0}
        # The hot path reads plain floats, not model attributes.
        self._rates = {role: (limit.per_s, float(limit.burst)) for role, limit in self._limits.items()}
        self._policies = {role: policy_header(limit) for role, limit in self._limits.items()}
        self._max = max_buckets
        self._buckets: OrderedDict[int, list[float]] = OrderedDict()  # key id -> [tokens, refilled at]

    def __len__(self) -> int:
        return len(self._buckets)

    def limit_of(self, role: str) -> KeyLimit | None:
        """The role's limit, None where it has none (per_s 0)."""
        return self._limits.get(role)

    def headers(self, role: str, tokens: float) -> tuple[str, str] | None:
        """(RateLimit-Policy, RateLimit) for a response to a key of `role` with `tokens` left; None
        without a limit. Built here rather than by rate_headers: this runs on every response."""
        rate = self._rates.get(role)
        if rate is None:
            return None
        return self._policies[role], f'"per-key";r={int(tokens)};t={math.ceil((rate[1] - tokens) / rate[0])}'

    def take(self, key_id: int, role: str, now: float) -> float:
        """Take a token from the key's bucket and return the tokens left (inf without a limit);
        RateLimited, taking nothing, when less than one is there."""
        rate = self._rates.get(role)
        if rate is None:
            return math.inf
        per_s, burst = rate
        buckets = self._buckets
        bucket = buckets.get(key_id)
        if bucket is None:
            if len(buckets) >= self._max:
                buckets.popitem(last=False)
            bucket = buckets[key_id] = [burst, now]
        else:
            buckets.move_to_end(key_id)
            tokens = bucket[0] + (now - bucket[1]) * per_s
            bucket[0] = tokens if tokens < burst else burst
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return bucket[0]
        raise RateLimited(max(1, math.ceil((1.0 - bucket[0]) / per_s)), self._limits[role])


class StreamSlots:
    """Live event streams per API key id; a slot is held for exactly as long as its stream runs."""

    def __init__(self, limits: Mapping[str, KeyLimit]) -> None:
        self._caps = {role: limit.streams for role, limit in limits.items()}
        self._open: dict[int, int] = {}

    def open_for(self, key_id: int) -> int:
        return self._open.get(key_id, 0)

    @contextmanager
    def held(self, key_id: int, role: str) -> Iterator[None]:
        """A slot for the block's duration; TooManyStreams before the block runs if the key has none left.
        Released however the block ends: the stream finished, the client went away, the server stops
        (the handler is cancelled) or an error."""
        cap = self._caps.get(role, 0)
        count = self._open.get(key_id, 0)
        if cap and count >= cap:
            raise TooManyStreams(f"this key has {count} live event streams open, the most a {role} key may "
                                 "hold at once per service; close one (or resume it with Last-Event-ID) first")
        self._open[key_id] = count + 1
        try:
            yield
        finally:
            left = self._open[key_id] - 1
            if left:
                self._open[key_id] = left
            else:
                del self._open[key_id]
