"""The auth cache is bounded, keeps real keys apart from made-up ones, and the bootstrap key is strong."""

from __future__ import annotations

import secrets

import asyncpg
import pytest
from pydantic import ValidationError

from shared.auth import (
    CacheLimits,
    KeyCache,
    Lru,
    WeakBootstrapKey,
    bootstrap_key_problem,
    create_api_key,
    ensure_bootstrap_admin,
)
from shared.errors import Unauthorized
from shared.settings import Settings
from tests.conftest import ADMIN_KEY

LIMITS = CacheLimits(ttl_s=300, max_keys=2, max_refused=3, refused_ttl_s=300, listen_check_s=1,
                     last_used_flush_s=60)


def test_the_lru_forgets_the_least_recently_used_first() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)


async def test_a_flood_of_made_up_keys_evicts_no_real_key(pool: asyncpg.Pool, database_url: str) -> None:
    async with pool.acquire() as conn:
        real = [await create_api_key(conn, "shop") for _ in range(3)]
    cache = KeyCache(pool, database_url, LIMITS)
    await cache.start()
    try:
        assert cache.trusted
        for key in real:
            await cache.authenticate(f"Bearer {key}")
        assert cache.sizes()[0] == 2 and not cache.is_cached(real[0])  # bounded: the oldest went
        assert cache.is_cached(real[1]) and cache.is_cached(real[2])
        for _ in range(200):
            with pytest.raises(Unauthorized):
                await cache.authenticate(f"Bearer osk_{secrets.token_urlsafe(32)}")
        assert cache.sizes() == (2, 3)
        assert cache.is_cached(real[1]) and cache.is_cached(real[2])
    finally:
        await cache.stop()


async def test_a_refused_key_that_is_then_created_is_let_in_at_once(pool: asyncpg.Pool, database_url: str) -> None:
    cache = KeyCache(pool, database_url, LIMITS)
    await cache.start()
    try:
        key = f"osk_{secrets.token_urlsafe(32)}"
        with pytest.raises(Unauthorized):
            await cache.authenticate(f"Bearer {key}")
        async with pool.acquire() as conn:
            await create_api_key(conn, "ops", key=key)  # its INSERT notifies: refusals are forgotten

        async def let_in() -> bool:
            try:
                await cache.authenticate(f"Bearer {key}")
            except Unauthorized:
                return False
            return True

        from tests.polling import eventually

        assert await eventually(let_in, within_s=2)
    finally:
        await cache.stop()


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer " + "x" * 600])
async def test_a_malformed_or_oversized_header_is_refused_without_a_query(pool: asyncpg.Pool, database_url: str,
                                                                          header: str | None) -> None:
    cache = KeyCache(pool, "postgresql://nobody@127.0.0.1:1/none", LIMITS)  # never started: no database needed
    with pytest.raises(Unauthorized):
        await cache.authenticate(header)


@pytest.mark.parametrize("key", [
    "short-but-random-Xk2",
    "a" * 64,
    "abababababababababababababababababababab",
    "0123456701234567012345670123456701234567",
    "0123456789abcdef0123456789abcdef",
    "9a92eb9a3246b415e1bc3a195b1c1c89",  # token_hex(16): 32 characters of 16 kinds estimate under 128 bits
    "osk_" + "password" * 5,
    "has spaces inside it ozqNHfA9RzzA07oLIAmpnJ50TnCZwqE2",
])
async def test_a_weak_bootstrap_key_is_refused_at_start_up_without_being_echoed(key: str, pool: asyncpg.Pool) -> None:
    assert bootstrap_key_problem(key) is not None
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, bootstrap_admin_key=key)  # type: ignore[call-arg]
    assert "OMNISTOCK_BOOTSTRAP_ADMIN_KEY refused" in str(refused.value) and key not in str(refused.value)
    async with pool.acquire() as conn:
        with pytest.raises(WeakBootstrapKey) as weak:
            await ensure_bootstrap_admin(conn, key)
    assert key not in str(weak.value)
    assert await pool.fetchval("SELECT count(*) FROM core.api_keys") == 0


@pytest.mark.parametrize("key", [ADMIN_KEY, "osk_8nrxqrFIf3itUJOvyrB_lkd5NOmlG7vPV7VtacVdP8A",
                                 "2cc8cf5279c8634aa0a55e497a1c34f0e7ceaebe63bba82e",
                                 "correct-Horse-battery-staple-9-Lamp-Quartz"])
def test_a_strong_bootstrap_key_is_accepted(key: str) -> None:
    assert bootstrap_key_problem(key) is None
    assert Settings(_env_file=None, bootstrap_admin_key=key).bootstrap_admin_key is not None  # type: ignore[call-arg]
