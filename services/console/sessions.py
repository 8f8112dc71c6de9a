"""Sessions, as pure rules: the cookie's token, how the person's API key is sealed, when a session ends.

The cookie holds a 256-bit random token; the database holds its SHA-256 and the person's API key
sealed with AES-256-GCM under a key derived from the token (HKDF-SHA256). Someone who reads the
sessions table (a backup, a replica, a leaked service password) learns no token and no usable key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE = "omnistock_session"
SIGN_IN_COOKIE = "omnistock_sign_in"  # the sign-in form's own CSRF token, before any session exists
MAX_TOKEN_LENGTH = 128
_SEAL_INFO = b"omnistock console: sealed API key"
_NONCE = 12


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _sealing_key(token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(token.encode())


def seal_key(token: str, api_key: str) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return nonce + AESGCM(_sealing_key(token)).encrypt(nonce, api_key.encode(), token_hash(token))


def unseal_key(token: str, sealed: bytes) -> str:
    """The API key sealed with `token` (cryptography's InvalidTag if it was sealed with another)."""
    return AESGCM(_sealing_key(token)).decrypt(sealed[:_NONCE], sealed[_NONCE:], token_hash(token)).decode()


@dataclass(frozen=True)
class Lifetime:
    idle: timedelta
    absolute: timedelta


def end_reason(created_at: datetime, last_seen_at: datetime, now: datetime, lifetime: Lifetime) -> str | None:
    """Why a session must end now ('expired' past its absolute lifetime, 'idle' past its idle one), or None."""
    if now >= created_at + lifetime.absolute:
        return "expired"
    if now >= last_seen_at + lifetime.idle:
        return "idle"
    return None


# last_seen_at is written at most this often: a page load then costs a read, not a write, and idle
# expiry stays exact to within this much.
TOUCH_EVERY = timedelta(seconds=30)


def needs_touch(last_seen_at: datetime, now: datetime) -> bool:
    return now - last_seen_at >= TOUCH_EVERY


def same_token(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())
