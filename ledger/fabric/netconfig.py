"""The Fabric configuration documents of the network, as plain data (no I/O): cryptogen's input, the
channel's genesis profile for configtxgen, and what each node changes in Fabric's release core.yaml
and orderer.yaml.

One `Topology` says where each node is reached: all on one host at their own ports for `omnistock
ledger fabric up`, or each under its compose service name (ledger/fabric/compose/ is generated from the
same functions, and tests/test_compose.py checks it still is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.fabric.layout import Layout
from ledger.fabric.names import (
    CHAINCODE_LABEL,
    CHAINCODE_NAME,
    CHANNEL,
    ORDERER_COMPOSE_SERVICE,
    ORDERER_DOMAIN,
    ORDERER_HOST,
    ORDERER_MSP,
    PEER_ORGS,
    Org,
    Ports,
)

PROFILE = "OmnistockLedgerChannel"
# Every TLS server certificate also names these, so the same crypto material serves a local network
# (dialled at 127.0.0.1 or localhost) and the compose one (dialled by service name).
LOCAL_NAMES = ("localhost", "127.0.0.1")
BUILDER_NAME = "omnistock-ccaas"


@dataclass(frozen=True)
class Topology:
    ports: Ports
    listen_host: str  # what every node binds
    orderer_host: str  # how peers and clients reach the orderer
    peer_hosts: dict[str, str]  # org key -> how others reach that org's peer
    chaincode_hosts: dict[str, str]  # org key -> how that org's peer reaches its chaincode server

    @classmethod
    def local(cls, ports: Ports, host: str) -> Topology:
        return cls(ports, host, host, {o.key: host for o in PEER_ORGS}, {o.key: host for o in PEER_ORGS})

    @classmethod
    def compose(cls, ports: Ports) -> Topology:
        return cls(ports, "0.0.0.0", ORDERER_COMPOSE_SERVICE,
                   {o.key: o.compose_service for o in PEER_ORGS},
                   {o.key: f"fabric-chaincode-{o.key}" for o in PEER_ORGS})

    def orderer_endpoint(self) -> str:
        return f"{self.orderer_host}:{self.ports.orderer}"

    def peer_endpoint(self, org: Org) -> str:
        return f"{self.peer_hosts[org.key]}:{self.ports.peer(org)}"

    def chaincode_endpoint(self, org: Org) -> str:
        return f"{self.chaincode_hosts[org.key]}:{self.ports.chaincode(org)}"


def crypto_config() -> dict[str, Any]:
    """cryptogen's input: one orderer org, one peer each for the retailer and the audit firm, with
    NodeOUs so that policies can name `RetailerMSP.peer` and `AuditMSP.peer`."""
    return {
        "OrdererOrgs": [{
            "Name": "Orderer",
            "Domain": ORDERER_DOMAIN,
            "EnableNodeOUs": True,
            "Specs": [{"Hostname": ORDERER_HOST.removesuffix(f".{ORDERER_DOMAIN}"),
                       "SANS": [*LOCAL_NAMES, ORDERER_COMPOSE_SERVICE]}],
        }],
        "PeerOrgs": [{
            "Name": org.key.capitalize(),
            "Domain": org.domain,
            "EnableNodeOUs": True,
            "Specs": [{"Hostname": org.peer_host.removesuffix(f".{org.domain}"),
                       "SANS": [*LOCAL_NAMES, org.compose_service]}],
            "Users": {"Count": 1},
        } for org in PEER_ORGS],
    }


def _signature(rule: str) -> dict[str, str]:
    return {"Type": "Signature", "Rule": rule}


def _implicit(rule: str) -> dict[str, str]:
    return {"Type": "ImplicitMeta", "Rule": rule}


def _peer_org(org: Org, layout: Layout, topology: Topology) -> dict[str, Any]:
    msp = org.msp_id
    host, port = topology.peer_endpoint(org).rsplit(":", 1)
    return {
        "Name": msp,
        "ID": msp,
        "MSPDir": str(layout.org_dir(org) / "msp"),
        "Policies": {
            "Readers": _signature(f"OR('{msp}.admin', '{msp}.peer', '{msp}.client')"),
            "Writers": _signature(f"OR('{msp}.admin', '{msp}.client')"),
            "Admins": _signature(f"OR('{msp}.admin')"),
            "Endorsement": _signature(f"OR('{msp}.peer')"),
        },
        # In the genesis block, so each peer learns the other organisation's peer by gossip at once:
        # the Gateway needs that to find an endorser of every organisation the policy names.
        "AnchorPeers": [{"Host": host, "Port": int(port)}],
    }


def channel_profile(layout: Layout, topology: Topology, batch_timeout_ms: int) -> dict[str, Any]:
    """configtx.yaml with the one profile configtxgen turns into the channel's genesis block: a Raft
    orderer of one node, no system channel (joined through the channel participation API)."""
    orderer_tls = layout.orderer_node / "tls" / "server.crt"
    orderer_org = {
        "Name": ORDERER_MSP,
        "ID": ORDERER_MSP,
        "MSPDir": str(layout.orderer_org / "msp"),
        "Policies": {
            "Readers": _signature(f"OR('{ORDERER_MSP}.member')"),
            "Writers": _signature(f"OR('{ORDERER_MSP}.member')"),
            "Admins": _signature(f"OR('{ORDERER_MSP}.admin')"),
        },
        "OrdererEndpoints": [topology.orderer_endpoint()],
    }
    standard = {
        "Readers": _implicit("ANY Readers"),
        "Writers": _implicit("ANY Writers"),
        "Admins": _implicit("MAJORITY Admins"),
    }
    profile = {
        "Policies": standard,
        "Capabilities": {"V2_0": True},
        "Orderer": {
            "OrdererType": "etcdraft",
            "EtcdRaft": {"Consenters": [{
                "Host": topology.orderer_host,
                "Port": topology.ports.orderer,
                "ClientTLSCert": str(orderer_tls),
                "ServerTLSCert": str(orderer_tls),
            }]},
            # Appends batch many entries per transaction; a short timeout keeps an append's wait for
            # its block (and so for a checkpoint that covers it) well inside the latency budget.
            "BatchTimeout": f"{batch_timeout_ms}ms",
            "BatchSize": {"MaxMessageCount": 500, "AbsoluteMaxBytes": "64 MB", "PreferredMaxBytes": "4 MB"},
            "Organizations": [orderer_org],
            "Policies": {**standard, "BlockValidation": _implicit("ANY Writers")},
            "Capabilities": {"V2_0": True},
        },
        "Application": {
            "Organizations": [_peer_org(org, layout, topology) for org in PEER_ORGS],
            "Policies": {
                **standard,
                # MAJORITY of two organisations is both: no chaincode definition without the auditor.
                "LifecycleEndorsement": _implicit("MAJORITY Endorsement"),
                "Endorsement": _implicit("MAJORITY Endorsement"),
            },
            "Capabilities": {"V2_5": True},
        },
    }
    return {"Profiles": {PROFILE: profile}}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def apply(tree: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Fabric's release config with `changes` (dotted keys) set; every other key as released."""
    for dotted, value in changes.items():
        _set(tree, dotted, value)
    return tree


def peer_changes(org: Org, layout: Layout, topology: Topology, builder_dir: Path) -> dict[str, Any]:
    node = layout.peer_node(org)
    endpoint = topology.peer_endpoint(org)
    listen = topology.listen_host
    return {
        "peer.id": org.peer_host,
        "peer.networkId": CHANNEL,
        "peer.listenAddress": f"{listen}:{topology.ports.peer(org)}",
        "peer.address": endpoint,
        "peer.addressAutoDetect": False,
        "peer.chaincodeListenAddress": f"{listen}:{topology.ports.peer_chaincode(org)}",
        "peer.chaincodeAddress": f"{topology.peer_hosts[org.key]}:{topology.ports.peer_chaincode(org)}",
        "peer.gateway.enabled": True,
        "peer.gossip.bootstrap": endpoint,
        "peer.gossip.endpoint": endpoint,
        "peer.gossip.externalEndpoint": endpoint,  # seen by the other organisation: discovery needs it
        "peer.tls.enabled": True,
        "peer.tls.cert.file": str(node / "tls" / "server.crt"),
        "peer.tls.key.file": str(node / "tls" / "server.key"),
        "peer.tls.rootcert.file": str(node / "tls" / "ca.crt"),
        "peer.tls.clientRootCAs.files": [str(node / "tls" / "ca.crt")],
        "peer.mspConfigPath": str(node / "msp"),
        "peer.localMspId": org.msp_id,
        "peer.fileSystemPath": str(layout.peer_home(org) / "data"),
        "ledger.state.stateDatabase": "goleveldb",
        # No Docker: chaincode runs as a service, found through our own external builder.
        "vm.endpoint": "",
        "chaincode.externalBuilders": [{"name": BUILDER_NAME, "path": str(builder_dir)}],
        "operations.listenAddress": f"{listen}:{topology.ports.peer_operations(org)}",
        "metrics.provider": "prometheus",
    }


def orderer_changes(layout: Layout, topology: Topology) -> dict[str, Any]:
    tls = layout.orderer_node / "tls"
    data = layout.orderer_home / "data"
    return {
        "General.ListenAddress": topology.listen_host,
        "General.ListenPort": topology.ports.orderer,
        "General.TLS.Enabled": True,
        "General.TLS.PrivateKey": str(tls / "server.key"),
        "General.TLS.Certificate": str(tls / "server.crt"),
        "General.TLS.RootCAs": [str(tls / "ca.crt")],
        # Raft's cluster traffic shares the main listener and its TLS pair.
        "General.Cluster.ClientCertificate": str(tls / "server.crt"),
        "General.Cluster.ClientPrivateKey": str(tls / "server.key"),
        "General.BootstrapMethod": "none",  # no system channel: channels are joined with osnadmin
        "General.LocalMSPDir": str(layout.orderer_node / "msp"),
        "General.LocalMSPID": ORDERER_MSP,
        "FileLedger.Location": str(data / "ledger"),
        "Consensus.WALDir": str(data / "etcdraft" / "wal"),
        "Consensus.SnapDir": str(data / "etcdraft" / "snapshot"),
        "ChannelParticipation.Enabled": True,
        "Admin.ListenAddress": f"{topology.listen_host}:{topology.ports.orderer_admin}",
        "Admin.TLS.Enabled": True,
        "Admin.TLS.Certificate": str(tls / "server.crt"),
        "Admin.TLS.PrivateKey": str(tls / "server.key"),
        "Admin.TLS.ClientAuthRequired": True,
        "Admin.TLS.ClientRootCAs": [str(layout.orderer_tls_ca)],
        "Operations.ListenAddress": f"{topology.listen_host}:{topology.ports.orderer_operations}",
        "Metrics.Provider": "prometheus",
    }


def connection_json(address: str) -> dict[str, Any]:
    """What a ccaas package tells the peer: where its organisation's chaincode server listens."""
    return {"address": address, "dial_timeout": "10s", "tls_required": False}


def describe(layout: Layout, topology: Topology, policy: str, package_ids: dict[str, str]) -> dict[str, Any]:
    """network.json: what a client needs to reach the network and act as one of its members (endpoints,
    TLS roots, the name in each TLS certificate, MSP folders, member certificates and keys)."""

    def member(org: Org, name: str) -> dict[str, str]:
        msp = layout.user(org, name) / "msp"
        return {"msp_dir": str(msp), "cert": str(msp / "signcerts" / f"{name}@{org.domain}-cert.pem"),
                "key": str(msp / "keystore" / "priv_sk")}

    return {
        "channel": CHANNEL,
        "chaincode": CHAINCODE_NAME,
        "chaincode_label": CHAINCODE_LABEL,
        "endorsement_policy": policy,
        "port_base": topology.ports.base,
        "orderer": {"endpoint": topology.orderer_endpoint(), "host": ORDERER_HOST,
                    "tls_ca": str(layout.orderer_tls_ca)},
        "orgs": {org.key: {
            "msp_id": org.msp_id,
            "peer_endpoint": topology.peer_endpoint(org),
            "peer_host": org.peer_host,  # the TLS server name when dialling by another address
            "tls_ca": str(layout.tls_ca(org)),
            "ca_cert": str(layout.org_dir(org) / "msp" / "cacerts" / f"ca.{org.domain}-cert.pem"),
            "msp_dir": str(layout.org_dir(org) / "msp"),
            "users": {name: member(org, name) for name in ("Admin", "User1")},
            "chaincode_address": topology.chaincode_endpoint(org),
            "package_id": package_ids[org.key],
        } for org in PEER_ORGS},
    }
