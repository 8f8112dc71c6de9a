from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import identity
from ledger.port import Ledger
from ledger.service.use_cases import open_ledger
from shared.settings import Settings


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised identity set for tests that only read it (key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("omnistock-data")
    identity.init_identities(directory, now=datetime(2024, 1, 1, tzinfo=UTC))
    return directory


@pytest.fixture(scope="session")
def trust(data_dir: Path) -> identity.TrustStore:
    return identity.TrustStore.from_dir(identity.msp_dir(data_dir))


# --- backends behind the port -----------------------------------------------------------------
# Contract tests take the `ledger` fixture and run once per backend listed here; the Fabric backend
# joins by adding its name and a branch below that yields it.
BACKENDS = ["postgres"]
CHECKPOINT_EVERY = 50


@pytest.fixture
def ledger_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ledger_checkpoint_every": CHECKPOINT_EVERY})


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, ledger_settings: Settings) -> AsyncIterator[Ledger]:
    if request.param == "postgres":
        async with open_ledger(ledger_settings, max_size=8) as backend:
            yield backend
    else:  # pragma: no cover - a backend listed above without a branch here
        raise NotImplementedError(request.param)


def sale(n: int, day: str = "2024-05-01", channel: str = "online", location_id: str | None = None,
         amount: str = "10.00") -> dict[str, Any]:
    return {"kind": "reconciled_sale", "business_day": day, "channel": channel, "location_id": location_id,
            "sales_total": amount, "currency": "EUR", "order_id": f"o-{n}"}


def summary(day: str = "2024-05-01", total: str = "100.00") -> dict[str, Any]:
    return {"kind": "reconciliation_summary", "business_day": day, "sales_total": total}


@pytest.fixture
def finance_id(ledger: Ledger, ledger_settings: Settings) -> identity.Identity:
    return identity.load_identity(ledger_settings.data_dir, "finance")


@pytest.fixture
def ledger_trust(ledger: Ledger, ledger_settings: Settings) -> identity.TrustStore:
    return identity.TrustStore.from_dir(identity.msp_dir(ledger_settings.data_dir))
