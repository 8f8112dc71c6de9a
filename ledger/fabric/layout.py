"""Where everything of one local Fabric network lives under its data folder (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.fabric.names import ORDERER_DOMAIN, ORDERER_HOST, Org

# The process names `up` starts and `down` stops, in start order.
ORDERER_PROCESS = "orderer"


def peer_process(org: Org) -> str:
    return f"peer-{org.key}"


def chaincode_process(org: Org) -> str:
    return f"chaincode-{org.key}"


@dataclass(frozen=True)
class Layout:
    root: Path

    # --- generated configuration -------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def crypto(self) -> Path:
        return self.root / "crypto"

    @property
    def genesis_block(self) -> Path:
        return self.root / "channel" / "genesis.block"

    @property
    def port_base_file(self) -> Path:
        """The port base the genesis block was made for (it names the orderer's and anchor peers' ports)."""
        return self.root / "channel" / "port-base"

    @property
    def network_file(self) -> Path:
        """The JSON description of the running network that clients (the Gateway backend) read."""
        return self.root / "network.json"

    # --- processes ---------------------------------------------------------------------------
    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pid_file(self, process: str) -> Path:
        return self.run / f"{process}.pid"

    def log_file(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    # --- the orderer -------------------------------------------------------------------------
    @property
    def orderer_org(self) -> Path:
        return self.crypto / "ordererOrganizations" / ORDERER_DOMAIN

    @property
    def orderer_node(self) -> Path:
        return self.orderer_org / "orderers" / ORDERER_HOST

    @property
    def orderer_tls_ca(self) -> Path:
        return self.orderer_org / "tlsca" / f"tlsca.{ORDERER_DOMAIN}-cert.pem"

    @property
    def orderer_admin(self) -> Path:
        return self.orderer_org / "users" / f"Admin@{ORDERER_DOMAIN}"

    @property
    def orderer_home(self) -> Path:  # FABRIC_CFG_PATH of the orderer (orderer.yaml) and its ledger
        return self.root / "orderer"

    # --- the peers and their organisations ---------------------------------------------------
    def org_dir(self, org: Org) -> Path:
        return self.crypto / "peerOrganizations" / org.domain

    def peer_node(self, org: Org) -> Path:
        return self.org_dir(org) / "peers" / org.peer_host

    def tls_ca(self, org: Org) -> Path:
        return self.org_dir(org) / "tlsca" / f"tlsca.{org.domain}-cert.pem"

    def user(self, org: Org, name: str) -> Path:
        """A member's folder (msp/ with signcerts, keystore; tls/): name is Admin or User1."""
        return self.org_dir(org) / "users" / f"{name}@{org.domain}"

    def peer_home(self, org: Org) -> Path:  # FABRIC_CFG_PATH of the peer and its CLI (core.yaml)
        return self.root / "peers" / org.key

    def package(self, org: Org) -> Path:
        return self.root / "chaincode" / f"{org.key}.tar.gz"
