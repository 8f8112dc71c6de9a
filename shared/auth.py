"""API keys (stored as SHA-256 hashes) and the principal a request acts as.

Keys are 256-bit random tokens, so a fast hash is enough: nobody brute-forces 2^256, and a slow KDF
would cost milliseconds on every request.

KeyCache answers "who is this key?" from memory and stays exact without a timer: every change to a
key row NOTIFYs `omnistock_keys` (shared/migrations/0003), one LISTEN connection per cache evicts that
key at once, and while that connection is down nothing is cached at all (each request asks the
database), so a notification lost with a connection can never keep a revoked key alive. Expiry needs
no notification: the cached principal carries `expires_at`, checked on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar, get_args

import asyncpg

from shared.db import Connection, Pool
from shared.errors import Forbidden, Unauthorized, field_error
from shared.logging import get_logger
from shared.settings import Settings

Role = Literal["admin", "ops", "store", "shop", "finance", "auditor"]
ROLES: tuple[str, ...] = get_args(Role)
KEY_PREFIX = "osk_"
KEYS_CHANNEL = "omnistock_keys"
MAX_KEY_LENGTH = 512  # longer is no key of ours: refused before hashing or asking anyone
# The bootstrap admin key is chosen by a person, not by new_key(): it must be long and look random.
MIN_BOOTSTRAP_LENGTH = 32
MIN_BOOTSTRAP_BITS = 128

log = get_logger("omnistock.auth")


@dataclass(frozen=True)
class Principal:
    key_id: int
    role: str
    location_id: str | None = None
    expires_at: datetime | None = None
    person: str | None = None  # the console user this key stands for (core/0004), None for a machine's key

    @property
    def subject(self) -> str:
        """Who acts, as journals and histories record it: `role:key id`, and `:person` for a person's key."""
        return f"{self.role}:{self.key_id}:{self.person}" if self.person else f"{self.role}:{self.key_id}"

    def require_role(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"role '{self.role}' may not do this (needs one of: {', '.join(roles)})")

    def require_location(self, location_id: str) -> None:
        """A store key acts only on its own location; other write roles are checked by require_role."""
        if self.role == "store" and self.location_id != location_id:
            raise Forbidden(f"this store key is bound to location '{self.location_id}', not '{location_id}'")


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def bearer_key(header: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header, or 401."""
    if not header or not header.startswith("Bearer "):
        raise Unauthorized("send 'Authorization: Bearer <api key>'")
    key = header[len("Bearer "):].strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Unauthorized("unknown API key")
    return key


def estimated_bits(key: str) -> float:
    """A key's entropy as its characters' empirical Shannon entropy times its length: a crude upper
    bound, but it catches what people type (repeats, short alphabets, 'aaaa…', 'abab…')."""
    counts = Counter(key)
    per_char = -sum(n / len(key) * math.log2(n / len(key)) for n in counts.values())
    return per_char * len(key)


def repeats_itself(key: str) -> bool:
    """Whether deflate finds repeats in `key` ('passwordpassword…'): fixed Huffman codes spend 8 bits or
    more on every literal, so only repeated runs shrink it, never a small alphabet such as hex."""
    data = key.encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_FIXED)
    packed = len(packer.compress(data) + packer.flush()) - 2  # the block's own framing
    return packed < 0.9 * len(data)


def bootstrap_key_problem(key: str) -> str | None:
    """Why `key` may not be the bootstrap admin key (it never appears in the answer), or None."""
    if len(key) < MIN_BOOTSTRAP_LENGTH:
        return f"shorter than {MIN_BOOTSTRAP_LENGTH} characters"
    if any(not char.isprintable() or char.isspace() for char in key):
        return "holds spaces or control characters"
    if len(set(key)) < 10 or estimated_bits(key) < MIN_BOOTSTRAP_BITS or repeats_itself(key):
        return (f"too predictable (under {MIN_BOOTSTRAP_BITS} bits estimated); make one with"
                " `python -c 'import secrets; print(\"osk_\" + secrets.token_urlsafe(32))'`")
    return None


async def create_api_key(conn: Connection, role: str, location_id: str | None = None,
                         label: str | None = None, key: str | None = None,
                         expires_at: datetime | None = None) -> str:
    """As the database owner: store a key's hash and return the key (the only time it is visible).
    An existing `key` is left as it is (revoked stays revoked)."""
    if role not in ROLES:
        raise field_error("role", f"must be one of {', '.join(ROLES)}")
    if (role == "store") != (location_id is not None):
        raise field_error("location_id", "required for role 'store' and only for it")
    key = key or new_key()
    await conn.execute(
        "INSERT INTO core.api_keys (key_hash, role, location_id, label, expires_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (key_hash) DO NOTHING",
        hash_key(key), role, location_id, label, expires_at,
    )
    return key


class WeakBootstrapKey(ValueError):
    """OMNISTOCK_BOOTSTRAP_ADMIN_KEY is too short or too predictable to guard the admin role."""


async def ensure_bootstrap_admin(conn: Connection, key: str) -> None:
    if problem := bootstrap_key_problem(key):
        raise WeakBootstrapKey(f"OMNISTOCK_BOOTSTRAP_ADMIN_KEY refused: {problem}")
    await create_api_key(conn, "admin", label="bootstrap", key=key)


K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dict of at most `bound` entries that forgets the least recently used first."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.bound <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.bound:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def drop_where(self, doomed: Callable[[V], bool]) -> None:
        for key in [k for k, v in self._data.items() if doomed(v)]:
            del self._data[key]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class CacheLimits:
    ttl_s: float  # a backstop only: changes arrive by notification; 0 turns caching (and listening) off
    max_keys: int
    max_refused: int
    refused_ttl_s: float
    listen_check_s: float  # how often the listening connection is asked whether it still answers
    last_used_flush_s: float
    connect_timeout_s: float = 5.0


LOOKUP = "SELECT id, role, location_id, revoked_at, expires_at, person FROM core.api_keys WHERE key_hash = $1"
# Last-used times of many keys in one statement. SKIP LOCKED: a key being revoked this instant is left
# for the next flush rather than making the revocation wait (a key in use is touched again anyway).
TOUCH = """
UPDATE core.api_keys k SET last_used_at = u.used_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS u(id, used_at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.used_at)
  AND k.id IN (SELECT id FROM core.api_keys WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED)
"""


class KeyCache:
    """Looks keys up in the database and remembers the answers in two bounded LRUs: known keys, and
    refused ones (unknown or revoked) apart, so a flood of made-up keys evicts only other made-up keys,
    never the keys tills are using."""

    def __init__(self, pool: Pool, listen_dsn: str, limits: CacheLimits, name: str = "omnistock") -> None:
        self._pool = pool
        self._dsn = listen_dsn
        self._limits = limits
        self._name = name
        self._known: Lru[bytes, tuple[float, Principal]] = Lru(limits.max_keys)
        self._refused: Lru[bytes, tuple[float, str]] = Lru(limits.max_refused)
        self._trusted = False  # True only while the LISTEN connection is up
        self._epoch = 0  # bumped by every invalidation: a lookup that raced one is not cached
        self._used: dict[int, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._watchers: dict[int, set[asyncio.Event]] = {}

    @property
    def trusted(self) -> bool:
        return self._trusted

    def is_cached(self, key: str) -> bool:
        """Whether `key` would be answered from memory now (for tests and diagnostics)."""
        known = self._known.get(hash_key(key))
        return self._trusted and known is not None and known[0] > time.monotonic()

    def sizes(self) -> tuple[int, int]:
        """(known keys, refused keys) held."""
        return len(self._known), len(self._refused)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="key-cache-last-used"))
        if self._limits.ttl_s > 0:
            self._tasks.append(asyncio.create_task(self._listen_forever(), name="key-cache-listen"))
            # Trusted from the first request when the database answers; otherwise start anyway and
            # ask the database per request until the listener is up.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), self._limits.connect_timeout_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.flush_last_used()

    # --- the request path -------------------------------------------------------------------------

    async def authenticate(self, header: str | None) -> Principal:
        digest = hash_key(bearer_key(header))
        now = time.monotonic()
        principal = self._cached(digest, now)
        if principal is None:
            principal = await self._look_up(digest, now)
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            raise Unauthorized(f"API key expired at {principal.expires_at.isoformat()}")
        self._used[principal.key_id] = datetime.now(UTC)
        return principal

    def _cached(self, digest: bytes, now: float) -> Principal | None:
        if not self._trusted:
            return None
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > now:
            raise Unauthorized(refused[1])
        return None

    async def _look_up(self, digest: bytes, now: float) -> Principal:
        epoch = self._epoch
        row = await self._pool.fetchrow(LOOKUP, digest)
        cacheable = self._trusted and self._epoch == epoch
        if row is None or row["revoked_at"] is not None:
            reason = "unknown API key" if row is None else "API key revoked"
            if cacheable:
                self._refused.put(digest, (now + min(self._limits.refused_ttl_s, self._limits.ttl_s), reason))
            raise Unauthorized(reason)
        principal = Principal(row["id"], row["role"], row["location_id"], row["expires_at"], row["person"])
        if cacheable:
            self._known.put(digest, (now + self._limits.ttl_s, principal))
        return principal

    # --- keys in long-lived use (event streams) ---------------------------------------------------

    async def wait_invalid(self, principal: Principal) -> str:
        """Return (the reason) once `principal`'s key is revoked or expires: an open stream ends then.
        Woken by the key's notification; while the listener is down it asks the database each second."""
        wake = asyncio.Event()
        self._watchers.setdefault(principal.key_id, set()).add(wake)
        try:
            while True:
                timeout: float | None = None
                if principal.expires_at is not None:
                    timeout = max(0.0, (principal.expires_at - datetime.now(UTC)).total_seconds())
                if not self._trusted:
                    timeout = min(timeout if timeout is not None else 1.0, 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)
                woken, _ = wake.is_set(), wake.clear()
                if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
                    return "API key expired"
                if (woken or not self._trusted) and not await self._still_active(principal.key_id):
                    return "API key revoked"
        finally:
            watchers = self._watchers.get(principal.key_id, set())
            watchers.discard(wake)
            if not watchers:
                self._watchers.pop(principal.key_id, None)

    async def _still_active(self, key_id: int) -> bool:
        try:
            return bool(await self._pool.fetchval(
                "SELECT revoked_at IS NULL FROM core.api_keys WHERE id = $1", key_id))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return True  # the database cannot say: keep serving, ask again at the next wake-up

    def _wake(self, key_id: int | None = None) -> None:
        for watched, events in self._watchers.items():
            if key_id is None or watched == key_id:
                for event in events:
                    event.set()

    # --- invalidation -----------------------------------------------------------------------------

    def forget(self, key_id: int) -> None:
        """Key `key_id` changed: drop it, and every refusal (it may be a key just created)."""
        self._epoch += 1
        self._known.drop_where(lambda entry: entry[1].key_id == key_id)
        self._refused.clear()
        self._wake(key_id)

    def _distrust(self) -> None:
        self._trusted = False
        self._epoch += 1
        self._known.clear()
        self._refused.clear()
        self._wake()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            self.forget(int(payload))
        except ValueError:  # not one of ours: forget everything rather than guess
            self._epoch += 1
            self._known.clear()
            self._refused.clear()

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._limits.connect_timeout_s,
                                             server_settings={"application_name": f"{self._name}-keys"})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(KEYS_CHANNEL, self._on_notify)
                # Listening now: whatever changes from here is heard; what changed before is read afresh.
                self._distrust()
                self._trusted = True
                self._listening.set()
                backoff = 0.1
                await self._watch(conn, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the listener means "stop trusting"; it retries
                log.warning("key change listener lost; authenticating against the database until it is back",
                            error=type(exc).__name__)
            finally:
                self._distrust()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Until the connection ends; a silent network loss shows as a ping that does not come back."""
        check = self._limits.listen_check_s
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), check)
            except TimeoutError:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), check)
        raise ConnectionError("the listening connection closed")

    # --- last used ---------------------------------------------------------------------------------

    async def flush_last_used(self) -> None:
        """Write the last-used times gathered since the previous flush, in one statement."""
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            await self._pool.execute(TOUCH, list(used), list(used.values()))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            for key_id, at in used.items():  # keep them for the next flush, newest wins
                if key_id not in self._used or self._used[key_id] < at:
                    self._used[key_id] = at
            log.warning("could not record when keys were last used; will retry", error=type(exc).__name__)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._limits.last_used_flush_s)
            await self.flush_last_used()


def cache_limits(settings: Settings) -> CacheLimits:
    return CacheLimits(ttl_s=settings.auth_cache_ttl_s, max_keys=settings.auth_cache_max_keys,
                       max_refused=settings.auth_cache_max_refused, refused_ttl_s=settings.auth_refused_ttl_s,
                       listen_check_s=settings.auth_listen_check_s,
                       last_used_flush_s=settings.auth_last_used_flush_s,
                       connect_timeout_s=settings.db_connect_timeout_s)
