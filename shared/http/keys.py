"""Typed application keys: what every service app carries."""

from __future__ import annotations

from aiohttp import web

from shared.auth import KeyCache, Principal
from shared.db import Pool
from shared.event_stream import EventHub
from shared.http.rate_limit import StreamSlots, TokenBuckets
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", str)
POOL = web.AppKey("pool", Pool)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
HUB = web.AppKey("hub", EventHub)
PRINCIPAL = web.RequestKey("principal", Principal)
BUCKETS = web.AppKey("buckets", TokenBuckets)  # requests per key (shared/http/rate_limit.py)
STREAMS = web.AppKey("streams", StreamSlots)  # live event streams per key
TOKENS_LEFT = web.RequestKey("tokens_left", float)  # in the key's bucket after this request
