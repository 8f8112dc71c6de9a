import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import identity
from ledger.cosign import Cosigner
from ledger.port import Json, Ledger, Receipt
from ledger.postgres.backend import PostgresLedger
from ledger.service.use_cases import member_identity, open_ledger
from ledger.signing import sign_submission
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
# Contract tests take the `ledger` fixture and run once per backend listed here. "fabric" runs on a
# local Fabric network of its own per test (a fresh, empty log: the contract counts seqs from 0), made
# from the binaries at OMNISTOCK_FABRIC_BIN; without them it is skipped, saying so.
BACKENDS = ["postgres", "fabric"]
CHECKPOINT_EVERY = 50
# Fabric networks of the contract tests: away from the fabric_network fixture's base (7350) and a
# developer's (7050); each xdist worker 60 ports further on.
FABRIC_PORT_BASE = 7380


@pytest.fixture
def ledger_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ledger_checkpoint_every": CHECKPOINT_EVERY})


@asynccontextmanager
async def ledger_port(settings: Settings, max_size: int = 4) -> AsyncIterator[PostgresLedger]:
    """The embedded backend as the ledger service opens it (identities created first, as `ledger init` does)."""
    identity.init_identities(settings.data_dir)
    async with open_ledger(settings, max_size=max_size, checkpoint_signer=member_identity(settings, "ledger")) as port:
        yield port


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, ledger_settings: Settings) -> AsyncIterator[Ledger]:
    """The ledger service's port: it holds the ledger identity (checkpoint key) and no other."""
    identity.init_identities(ledger_settings.data_dir)
    if request.param == "postgres":
        async with open_ledger(ledger_settings, max_size=8,
                               checkpoint_signer=member_identity(ledger_settings, "ledger")) as backend:
            yield backend
    elif request.param == "fabric":
        async with fabric_ledger(ledger_settings) as backend:
            yield backend
    else:  # pragma: no cover - a backend listed above without a branch here
        raise NotImplementedError(request.param)


def fabric_port_base() -> int:
    """FABRIC_PORT_BASE (or OMNISTOCK_FABRIC_TEST_PORT_BASE, for two test runs side by side), 60 ports
    further for each xdist worker (room for two networks each: a network takes 17)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = int(os.environ.get("OMNISTOCK_FABRIC_TEST_PORT_BASE", FABRIC_PORT_BASE))
    return base + 60 * (int(worker) if worker.isdigit() else 0)


@asynccontextmanager
async def fabric_network_for(settings: Settings, second: bool = False) -> AsyncIterator[Any]:
    """A fresh local Fabric network whose chaincode trusts `settings.data_dir`'s organisations; stopped
    and deleted afterwards. `second`: on ports of its own, beside another one of this worker's."""
    from ledger.fabric.network import FabricNetwork
    from tests.ledger.fabric.conftest import fabric_bin

    network = FabricNetwork(settings.model_copy(update={
        "fabric_bin": fabric_bin(), "fabric_dir": settings.data_dir / "fabric",
        "fabric_port_base": fabric_port_base() + (30 if second else 0)}))
    try:
        await asyncio.to_thread(network.up)
        yield network
    finally:
        await asyncio.to_thread(network.down, purge=True)


@asynccontextmanager
async def fabric_ledger(settings: Settings) -> AsyncIterator[Any]:
    from ledger.fabric.backend import open_fabric_ledger

    async with fabric_network_for(settings) as network, open_fabric_ledger(settings, network.description()) as port:
        port.network = network  # for drills that stop a peer
        yield port


def is_fabric(ledger: Ledger) -> bool:
    return type(ledger).__name__ == "FabricLedger"


def checkpoint_signers(ledger: Ledger, cosigned: bool = True) -> list[str]:
    """Who signs a checkpoint, in the order the backend lists them: on Fabric the peers' organisations
    (sorted), which endorse every checkpoint at once; embedded, the ledger, then finance once it co-signed."""
    from ledger import policy

    if is_fabric(ledger):
        return sorted(policy.DEFAULT_CHECKPOINT_ENDORSERS)
    return ["ledger", "finance"] if cosigned else ["ledger"]


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
    """What an auditor trusts: our organisations' CAs (and, on Fabric, the peer organisations' CAs)."""
    if is_fabric(ledger):
        return ledger.trust()  # type: ignore[attr-defined, no-any-return]
    return identity.TrustStore.from_dir(identity.msp_dir(ledger_settings.data_dir))


async def append(ledger: Ledger, entries: list[dict[str, Any]], signer: identity.Identity) -> list[Receipt]:
    """Append as a submitter does: sign where it runs, send entries and signature."""
    return await ledger.append(entries, sign_submission(signer, entries))


async def cosign(ledger: Ledger, finance: identity.Identity, settings: Settings) -> Json | None:
    """Finance's co-signature of the newest checkpoint, as its service makes it (on Fabric there is
    none to make: both organisations' peers endorsed it already)."""
    if is_fabric(ledger):
        return await ledger.checkpoint()
    return await Cosigner(ledger, finance, identity.TrustCache(identity.msp_dir(settings.data_dir))).cosign_latest()
