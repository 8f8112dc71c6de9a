"""The services that exist, by name. `omnistock up` runs all of them; `serve NAME` runs one.

Each module named here has `create_app(settings) -> web.Application` and `MIGRATIONS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SERVICE_MODULES: dict[str, str] = {
    "inventory": "services.inventory.app",
    "orders": "services.orders.app",
    "ecommerce": "services.ecommerce.app",
    "finance": "services.finance.app",
    "ledger": "ledger.service.app",
    "console": "services.console.app",
}


def service_names() -> list[str]:
    return list(SERVICE_MODULES)


def load(name: str) -> ModuleType:
    return importlib.import_module(SERVICE_MODULES[name])


def all_migrations() -> list:  # type: ignore[type-arg]
    """Every service's migration sets, each once, in dependency order."""
    seen: dict[str, object] = {}
    for name in SERVICE_MODULES:
        for migration_set in load(name).MIGRATIONS:
            seen.setdefault(migration_set.schema, migration_set)
    return list(seen.values())
