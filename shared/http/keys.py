"""Typed application keys: what every service app carries."""

from __future__ import annotations

from aiohttp import web

from shared.auth import KeyCache, Principal
from shared.db import Pool
from shared.event_stream import EventHub
from shared.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", str)
POOL = web.AppKey("pool", Pool)
KEY_CACHE = web.AppKey("key_cache", KeyCache)
HUB = web.AppKey("hub", EventHub)
PRINCIPAL = web.RequestKey("principal", Principal)
