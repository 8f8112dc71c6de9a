"""The chaincode's lifecycle on the local network: each organisation installs its own ccaas package,
approves the one definition, and the definition is committed with both peers endorsing."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ledger.fabric.errors import FabricNetworkError
from ledger.fabric.names import CHAINCODE_NAME, CHAINCODE_SEQUENCE, CHAINCODE_VERSION, CHANNEL, PEER_ORGS, Org
from ledger.fabric.package import ccaas_package, package_id

if TYPE_CHECKING:
    from ledger.fabric.network import FabricNetwork


def install(net: FabricNetwork, org: Org) -> str:
    """Install `org`'s ccaas package (its own chaincode server's address) on its peer; the package id."""
    package = ccaas_package(net.topology.chaincode_endpoint(org))
    path = net.layout.package(org)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(package)
    pid = package_id(package)
    installed = json.loads(net.peer_cli(org, "lifecycle", "chaincode", "queryinstalled", "--output", "json")
                           or "{}")
    if pid not in {c["package_id"] for c in installed.get("installed_chaincodes", [])}:
        net.peer_cli(org, "lifecycle", "chaincode", "install", str(path))
    return pid


def committed_definition(net: FabricNetwork) -> dict[str, Any] | None:
    """The definition committed on the channel, or None before the first commit."""
    try:
        out = net.peer_cli(PEER_ORGS[0], "lifecycle", "chaincode", "querycommitted", "--channelID", CHANNEL,
                           "--name", CHAINCODE_NAME, "--output", "json")
    except FabricNetworkError as exc:
        if "404" in str(exc) or "not found" in str(exc):
            return None
        raise
    return json.loads(out)


def define(net: FabricNetwork, package_ids: dict[str, str]) -> None:
    """Approve the definition for each organisation and commit it, endorsed by both peers. A changed
    endorsement policy is a new definition: the next sequence, approved by both again."""
    committed = committed_definition(net)
    previous = net.description() or {}
    sequence = CHAINCODE_SEQUENCE
    if committed is not None:
        if previous.get("endorsement_policy", net.policy) == net.policy:
            return
        sequence = int(committed["sequence"]) + 1
    definition = ["--channelID", CHANNEL, "--name", CHAINCODE_NAME, "--version", CHAINCODE_VERSION,
                  "--sequence", str(sequence), "--signature-policy", net.policy]
    for org in PEER_ORGS:
        readiness = json.loads(net.peer_cli(org, "lifecycle", "chaincode", "checkcommitreadiness",
                                            *definition, "--output", "json"))
        if not readiness.get("approvals", {}).get(org.msp_id):
            ordered(net, org, "lifecycle", "chaincode", "approveformyorg", *net.orderer_args(),
                    *definition, "--package-id", package_ids[org.key])
    peers: list[str] = []
    for org in PEER_ORGS:
        peers += ["--peerAddresses", net.topology.peer_endpoint(org),
                  "--tlsRootCertFiles", str(net.layout.tls_ca(org))]
    ordered(net, PEER_ORGS[0], "lifecycle", "chaincode", "commit", *net.orderer_args(), *definition, *peers)
    for org in PEER_ORGS:
        _wait_committed(net, org, sequence)


def ordered(net: FabricNetwork, org: Org, *args: str) -> str:
    """A peer CLI command that sends a transaction to the orderer, tried again while the orderer's
    freshly joined channel has no Raft leader yet (seconds after `osnadmin channel join`)."""
    deadline = time.monotonic() + net.start_timeout_s
    while True:
        try:
            return net.peer_cli(org, *args)
        except FabricNetworkError as exc:
            if "SERVICE_UNAVAILABLE" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _wait_committed(net: FabricNetwork, org: Org, sequence: int) -> None:
    """Committed means committed on every peer, not only on the one the commit went through."""
    deadline = time.monotonic() + net.start_timeout_s
    while time.monotonic() < deadline:
        try:
            out = json.loads(net.peer_cli(org, "lifecycle", "chaincode", "querycommitted", "--channelID",
                                          CHANNEL, "--name", CHAINCODE_NAME, "--output", "json"))
            if int(out.get("sequence", 0)) >= sequence:
                return
        except FabricNetworkError:
            pass
        time.sleep(0.5)
    raise FabricNetworkError(f"the chaincode definition did not reach {org.key}'s peer")
