"""The token bucket and the stream slots on their own: a clock passed in, so refills need no sleeping."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from shared.http.rate_limit import RateLimited, StreamSlots, TokenBuckets, TooManyStreams
from shared.settings import DEFAULT_KEY_LIMITS, KeyLimit, Settings

LIMITS = {"shop": KeyLimit(per_s=2, burst=3, streams=2), "ops": KeyLimit(per_s=0, burst=1, streams=0)}


def test_a_burst_past_the_bucket_is_refused_with_the_whole_seconds_until_a_token_is_back() -> None:
    buckets = TokenBuckets(LIMITS)
    assert [buckets.take(1, "shop", 100.0) for _ in range(3)] == [2.0, 1.0, 0.0]
    with pytest.raises(RateLimited) as refused:
        buckets.take(1, "shop", 100.0)
    assert refused.value.retry_after_s == 1  # 1 token at 2/s is 0.5 s: rounded up, never 0
    assert refused.value.headers["Retry-After"] == "1"
    assert refused.value.headers["RateLimit"] == '"per-key";r=0;t=2'  # 3 tokens at 2/s: 1.5 s to full
    assert refused.value.headers["RateLimit-Policy"] == '"per-key";q=3;w=2'
    assert refused.value.status == 429 and refused.value.code == "rate-limited"


def test_retry_after_is_rounded_up_from_the_refill_rate() -> None:
    buckets = TokenBuckets({"auditor": KeyLimit(per_s=0.25, burst=1, streams=1)})
    buckets.take(7, "auditor", 0.0)
    with pytest.raises(RateLimited) as refused:
        buckets.take(7, "auditor", 1.0)  # 0.25 tokens back; 0.75 more take 3 s
    assert refused.value.retry_after_s == 3


def test_a_refused_request_takes_nothing_and_the_bucket_refills_with_time() -> None:
    buckets = TokenBuckets(LIMITS)
    for _ in range(3):
        buckets.take(1, "shop", 0.0)
    for _ in range(5):  # refusals do not dig the bucket deeper
        with pytest.raises(RateLimited):
            buckets.take(1, "shop", 0.1)
    assert buckets.take(1, "shop", 0.5) == pytest.approx(0.0)  # 0.5 s at 2/s: exactly one token
    with pytest.raises(RateLimited):
        buckets.take(1, "shop", 0.5)
    assert buckets.take(1, "shop", 60.0) == 2.0  # idle for long: full (3), never more, minus this one


def test_each_key_has_its_own_bucket() -> None:
    buckets = TokenBuckets(LIMITS)
    for _ in range(3):
        buckets.take(1, "shop", 0.0)
    with pytest.raises(RateLimited):
        buckets.take(1, "shop", 0.0)
    assert buckets.take(2, "shop", 0.0) == 2.0


def test_a_role_without_a_rate_is_not_limited_and_gets_no_bucket() -> None:
    buckets = TokenBuckets(LIMITS)
    assert all(buckets.take(5, "ops", 0.0) == float("inf") for _ in range(1000))
    assert len(buckets) == 0 and buckets.limit_of("ops") is None and buckets.headers("ops", 1.0) is None


def test_the_headers_say_what_is_left_and_when_the_bucket_is_full() -> None:
    buckets = TokenBuckets(LIMITS)
    left = buckets.take(1, "shop", 0.0)
    assert buckets.headers("shop", left) == ('"per-key";q=3;w=2', '"per-key";r=2;t=1')


def test_buckets_are_bounded_and_the_least_recently_used_goes_first() -> None:
    buckets = TokenBuckets(LIMITS, max_buckets=100)
    for key_id in range(1000):
        buckets.take(key_id, "shop", 0.0)
    assert len(buckets) == 100
    buckets.take(900, "shop", 0.0)  # the oldest is used again: the idlest of the others (901) goes next
    buckets.take(5000, "shop", 0.0)
    assert len(buckets) == 100
    assert buckets.take(900, "shop", 0.0) == 0.0  # its third token: kept, not evicted
    assert buckets.take(901, "shop", 0.0) == 2.0  # evicted: a fresh bucket


def test_stream_slots_refuse_past_the_cap_and_free_on_every_kind_of_end() -> None:
    slots = StreamSlots(LIMITS)
    with slots.held(1, "shop"), slots.held(1, "shop"):
        with pytest.raises(TooManyStreams), slots.held(1, "shop"):
            pass
        with slots.held(2, "shop"):  # another key has its own
            assert slots.open_for(2) == 1
        assert slots.open_for(1) == 2
    assert slots.open_for(1) == 0
    with pytest.raises(RuntimeError), slots.held(1, "shop"):
        raise RuntimeError("a write failed")
    assert slots.open_for(1) == 0


async def test_a_cancelled_stream_frees_its_slot() -> None:
    slots = StreamSlots(LIMITS)
    entered = asyncio.Event()

    async def stream() -> None:
        with slots.held(1, "shop"):
            entered.set()
            await asyncio.Event().wait()  # until the server stops it

    task = asyncio.create_task(stream())
    await entered.wait()
    assert slots.open_for(1) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slots.open_for(1) == 0


def test_a_stream_cap_of_zero_is_no_cap() -> None:
    slots = StreamSlots(LIMITS)
    with slots.held(1, "ops"), slots.held(1, "ops"), slots.held(1, "ops"):
        assert slots.open_for(1) == 3


def test_settings_name_some_fields_of_some_roles_and_keep_the_other_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISTOCK_KEY_LIMITS", '{"shop": {"per_s": 5000}, "store": {"streams": 32}}')
    limits = Settings(_env_file=None).key_limits  # type: ignore[call-arg]
    assert limits["shop"] == KeyLimit(per_s=5000, burst=DEFAULT_KEY_LIMITS["shop"].burst,
                                      streams=DEFAULT_KEY_LIMITS["shop"].streams)
    assert limits["store"].streams == 32 and limits["store"].per_s == DEFAULT_KEY_LIMITS["store"].per_s
    assert limits["auditor"] == DEFAULT_KEY_LIMITS["auditor"]


@pytest.mark.parametrize("value", ['{"boss": {"per_s": 1}}', '{"shop": {"per_s": -1}}', '{"shop": {"burst": 0}}',
                                   '{"shop": {"rate": 5}}'])
def test_settings_refuse_an_unknown_role_field_or_a_negative_limit(monkeypatch: pytest.MonkeyPatch,
                                                                   value: str) -> None:
    monkeypatch.setenv("OMNISTOCK_KEY_LIMITS", value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
