"""The local Fabric network, started once per test run when OMNISTOCK_FABRIC_BIN names Fabric's
release binaries; without it, every test that needs the network is skipped and says why.

Under pytest-xdist each worker has its own session, so the workers share one network through a lock
file in the run's temporary folder: the first to arrive starts it, the last to leave stops it and
deletes its data (pytest removes the folder itself with old runs).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ledger.fabric.network import FabricNetwork
from shared.settings import Settings

SKIP_REASON = ("needs Hyperledger Fabric 2.5's release binaries: set OMNISTOCK_FABRIC_BIN to their folder "
               "(peer, orderer, configtxgen, osnadmin, cryptogen; config/ beside it)")
# Away from the default 7050 so a developer's own `omnistock ledger fabric up` keeps running meanwhile.
TEST_PORT_BASE = 7350


def fabric_bin() -> Path:
    value = os.environ.get("OMNISTOCK_FABRIC_BIN")
    if not value:
        pytest.skip(SKIP_REASON)
    return Path(value)


def network_settings(root: Path, port_base: int) -> Settings:
    return Settings(fabric_bin=fabric_bin(), fabric_dir=root / "fabric", data_dir=root,  # type: ignore[call-arg]
                    fabric_port_base=port_base)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def fabric_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FabricNetwork]:
    """The running network (FabricNetwork: .settings for a backend, .description() for network.json,
    .peer_stopped(org) for drills)."""
    fabric_bin()
    # Under xdist every worker's temporary folder sits in one folder of this run: the network's home.
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fabric-network"
    root.mkdir(exist_ok=True)
    base = int(os.environ.get("OMNISTOCK_FABRIC_PORT_BASE", TEST_PORT_BASE))
    network = FabricNetwork(network_settings(root, base))
    users = root / "users"
    with _locked(root / "lock"):
        network.up()
        users.write_text(str(int(users.read_text() or 0) + 1) if users.exists() else "1")
    try:
        yield network
    finally:
        with _locked(root / "lock"):
            left = int(users.read_text()) - 1
            users.write_text(str(left))
            if left == 0:
                network.down(purge=True)
