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


def rate_headers(limit: KeyLimit, tokens: float) -> dict[str, str]:
    """RateLimit-* (draft-ietf-httpapi-ratelimit-headers, the -06 fields): the burst, whole tokens left,
    and the seconds until the bucket is full again."""
    return {
        "RateLimit-Limit": str(limit.burst),
        "RateLimit-Remaining": str(int(tokens)),
        "RateLimit-Reset": str(math.ceil((limit.burst - tokens) / limit.per_s)),
    }


class TokenBuckets:
    """One token bucket per API key id; `take` on every authenticated request (a few hundred ns)."""

    def __init__(self, limits: Mapping[str, KeyLimit], max_buckets: int = MAX_BUCKETS) -> None:
        self._limits = dict(limits)
        self._max = max_buckets
        self._buckets: OrderedDict[int, list[float]] = OrderedDict()  # key id -> [tokens, refilled at]

    def __len__(self) -> int:
        return len(self._buckets)

    def limit_of(self, role: str) -> KeyLimit | None:
        """The role's limit, None where it has none (per_s 0)."""
        limit = self._limits.get(role)
        return limit if limit is not None and limit.per_s > 0 else None

    def take(self, key_id: int, role: str, now: float) -> float:
        """Take a token from the key's bucket and return the tokens left (inf without a limit);
        RateLimited, taking nothing, when less than one is there."""
        limit = self._limits.get(role)
        if limit is None or limit.per_s <= 0:
            return math.inf
        buckets = self._buckets
        bucket = buckets.get(key_id)
        if bucket is None:
            if len(buckets) >= self._max:
                buckets.popitem(last=False)
            bucket = buckets[key_id] = [float(limit.burst), now]
        else:
            buckets.move_to_end(key_id)
            tokens = bucket[0] + (now - bucket[1]) * limit.per_s
            bucket[0] = tokens if tokens < limit.burst else float(limit.burst)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return bucket[0]
        raise RateLimited(max(1, math.ceil((1.0 - bucket[0]) / limit.per_s)), limit)


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
