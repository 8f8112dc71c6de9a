"""The one way a service app is served: aiohttp's runner, with the connection guard in front.

`omnistock serve`/`up` (services/runtime.py) and the tests' servers (tests/conftest.py) both use
ServiceRunner, so what a test sees on the wire is what a till sees.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shared.http.connection_guard import ConnectionLimits, GuardedFactory
from shared.http.keys import SETTINGS

# Request lines and headers up to 16 KiB (aiohttp's default is 8 KiB): long batch queries such as
# ?sku=…&sku=… for 500 SKUs must reach the app, where limits are checked and answered as problems.
SERVER_OPTIONS: dict[str, Any] = {"access_log": None, "max_line_size": 16384, "max_field_size": 16384}


class ServiceRunner(web.AppRunner):
    """An AppRunner whose sites listen through a ConnectionGuard built from the app's settings."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **{**SERVER_OPTIONS, **kwargs})
        settings = app[SETTINGS]
        self.limits = ConnectionLimits(settings.header_timeout_s, settings.max_connections_per_client)
        self._factory: GuardedFactory | None = None

    @property
    def server(self) -> web.Server | None:
        # Sites call this as their protocol factory; aiohttp's own shutdown uses the inner server.
        inner = super().server
        if inner is None:
            return None
        if self._factory is None or self._factory.server is not inner:
            self._factory = GuardedFactory(inner, self.limits)
        return self._factory  # type: ignore[return-value]  # a protocol factory, what sites need of it
