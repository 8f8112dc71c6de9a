"""The docker-compose `fabric` profile's side of the network, made from the same functions as the local
one (ledger/fabric/netconfig.py), so the two cannot drift apart.

`omnistock ledger fabric compose-config /fabric` (the one-shot `fabric-config` container) writes into
the shared volume: cryptogen's and configtxgen's input, each organisation's ccaas package, our external
builder, and the two scripts the official fabric-tools image runs: crypto.sh (material and genesis
block, before any node starts) and setup.sh (channel joins and the chaincode lifecycle, once they run),
and network.json, the description clients read (as after `omnistock ledger fabric up`).
The nodes themselves are configured by environment variables (`peer_environment`, `orderer_environment`),
which tests/test_compose.py checks docker-compose.yml still spells out.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from ledger.fabric import netconfig
from ledger.fabric.layout import Layout
from ledger.fabric.names import (
    CHAINCODE_NAME,
    CHAINCODE_VERSION,
    CHANNEL,
    ORDERER_HOST,
    PEER_ORGS,
    Org,
    Ports,
)
from ledger.fabric.package import ccaas_package, package_id

ROOT = Path("/fabric")  # where every Fabric container mounts the shared volume
LAYOUT = Layout(ROOT)
PORTS = Ports(7050)  # each node has a host of its own in compose: the default layout
TOPOLOGY = netconfig.Topology.compose(PORTS)
BUILDER = ROOT / "builder"
CRYPTO_SCRIPT = ROOT / "crypto.sh"
SETUP_SCRIPT = ROOT / "setup.sh"


def env_value(value: Any) -> str:
    """A config value as Fabric reads it from an environment variable: lists in brackets, a list of
    mappings (external builders) in YAML flow style."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(env_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {env_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def _environment(prefix: str, changes: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}_{key.upper().replace('.', '_')}": env_value(value) for key, value in changes.items()}


def peer_environment(org: Org) -> dict[str, str]:
    return _environment("CORE", netconfig.peer_changes(org, LAYOUT, TOPOLOGY, BUILDER))


def orderer_environment() -> dict[str, str]:
    return _environment("ORDERER", netconfig.orderer_changes(LAYOUT, TOPOLOGY))


def chaincode_package(org: Org) -> bytes:
    return ccaas_package(TOPOLOGY.chaincode_endpoint(org))


def chaincode_environment(org: Org) -> dict[str, str]:
    """What `python -m ledger.fabric.chaincode` of `org` is started with: its package's id is known in
    advance because the package is reproducible."""
    return {"CHAINCODE_SERVER_ADDRESS": f"0.0.0.0:{PORTS.chaincode(org)}",
            "CHAINCODE_ID": package_id(chaincode_package(org)),
            "OMNISTOCK_FABRIC_ORG": org.key}


def _as_org(org: Org) -> str:
    """A shell function that makes the `peer` CLI act as `org`'s admin against `org`'s peer."""
    exports = {
        "CORE_PEER_LOCALMSPID": org.msp_id,
        "CORE_PEER_MSPCONFIGPATH": str(LAYOUT.user(org, "Admin") / "msp"),
        "CORE_PEER_ADDRESS": TOPOLOGY.peer_endpoint(org),
        "CORE_PEER_TLS_ENABLED": "true",
        "CORE_PEER_TLS_ROOTCERT_FILE": str(LAYOUT.tls_ca(org)),
    }
    return f"as_{org.key}() {{ export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()) + "; }"


def crypto_script() -> str:
    q = shlex.quote
    return "\n".join([
        "#!/bin/sh",
        "# Written by `omnistock ledger fabric compose-config`; run by fabric-crypto (fabric-tools image).",
        "set -eu",
        f"if [ ! -f {q(str(LAYOUT.orderer_node / 'tls' / 'server.crt'))} ]; then",
        f"  cryptogen generate --config={q(str(LAYOUT.config / 'crypto-config.yaml'))}"
        f" --output={q(str(LAYOUT.crypto))}",
        "fi",
        f"if [ ! -f {q(str(LAYOUT.genesis_block))} ]; then",
        f"  mkdir -p {q(str(LAYOUT.genesis_block.parent))}",
        f"  configtxgen -configPath {q(str(LAYOUT.config))} -profile {netconfig.PROFILE} -channelID {CHANNEL}"
        f" -outputBlock {q(str(LAYOUT.genesis_block))}",
        "fi",
        "",
    ])


def setup_script(policy: str) -> str:
    """Join the orderer and both peers to the channel, install each organisation's package, approve
    for both and commit; every step is skipped when already done, so the container may run again."""
    q = shlex.quote
    admin_tls = LAYOUT.orderer_admin / "tls"
    lines = [
        "#!/bin/sh",
        "# Written by `omnistock ledger fabric compose-config`; run by fabric-setup (fabric-tools image).",
        "set -eu",
        # Nodes take a few seconds to listen, and a freshly joined channel to elect its Raft leader.
        'retry() { n=0; until "$@"; do n=$((n+1)); [ $n -lt 60 ] || return 1; sleep 1; done; }',
        f"osn() {{ osnadmin channel \"$@\" -o {TOPOLOGY.orderer_host}:{PORTS.orderer_admin}"
        f" --ca-file {q(str(LAYOUT.orderer_tls_ca))} --client-cert {q(str(admin_tls / 'client.crt'))}"
        f" --client-key {q(str(admin_tls / 'client.key'))}; }}",
        *(_as_org(org) for org in PEER_ORGS),
        f"ORDERER='-o {TOPOLOGY.orderer_endpoint()} --ordererTLSHostnameOverride {ORDERER_HOST} --tls"
        f" --cafile {LAYOUT.orderer_tls_ca}'",
        f"POLICY={q(policy)}",
        f"DEFINITION='--channelID {CHANNEL} --name {CHAINCODE_NAME} --version {CHAINCODE_VERSION} --sequence 1'",
        "",
        f"if ! retry osn list | grep -q '\"name\": *\"{CHANNEL}\"'; then",
        f"  retry osn join --channelID {CHANNEL} --config-block {q(str(LAYOUT.genesis_block))}",
        "fi",
    ]
    for org in PEER_ORGS:
        pid = package_id(chaincode_package(org))
        package = LAYOUT.root / "chaincode" / f"{org.key}.tar.gz"
        lines += [
            "",
            f"as_{org.key}",
            f"if ! retry peer channel list | grep -qx {CHANNEL}; then",
            f"  retry peer channel join -b {q(str(LAYOUT.genesis_block))}",
            "fi",
            f"if ! peer lifecycle chaincode queryinstalled | grep -q {q(pid)}; then",
            f"  retry peer lifecycle chaincode install {q(str(package))}",
            "fi",
        ]
    # Once committed, the definition is never approved again: a second approval of sequence 1 is refused.
    lines += [
        "",
        f"as_{PEER_ORGS[0].key}",
        f"if peer lifecycle chaincode querycommitted --channelID {CHANNEL} --name {CHAINCODE_NAME}"
        " >/dev/null 2>&1; then",
        "  echo 'channel and chaincode ready (already committed)'",
        "  exit 0",
        "fi",
    ]
    for org in PEER_ORGS:
        pid = package_id(chaincode_package(org))
        lines += [
            f"as_{org.key}",
            "# shellcheck disable=SC2086",
            'if ! peer lifecycle chaincode checkcommitreadiness $DEFINITION --signature-policy "$POLICY" --output json'
            f" | grep -q '\"{org.msp_id}\": true'; then",
            '  retry peer lifecycle chaincode approveformyorg $ORDERER $DEFINITION --signature-policy "$POLICY"'
            f" --package-id {q(pid)}",
            "fi",
        ]
    peers = " ".join(f"--peerAddresses {TOPOLOGY.peer_endpoint(o)} --tlsRootCertFiles {q(str(LAYOUT.tls_ca(o)))}"
                     for o in PEER_ORGS)
    lines += [
        f"as_{PEER_ORGS[0].key}",
        f'retry peer lifecycle chaincode commit $ORDERER $DEFINITION --signature-policy "$POLICY" {peers}',
        "echo 'channel and chaincode ready'",
        "",
    ]
    return "\n".join(lines)


def write_material(root: Path, policy: str, batch_timeout_ms: int) -> list[Path]:
    """Everything the compose profile's Fabric containers read, written under `root` (mounted at /fabric)."""
    written: dict[Path, bytes] = {
        LAYOUT.config / "crypto-config.yaml": yaml.safe_dump(netconfig.crypto_config(), sort_keys=False).encode(),
        LAYOUT.config / "configtx.yaml": yaml.safe_dump(
            netconfig.channel_profile(LAYOUT, TOPOLOGY, batch_timeout_ms), sort_keys=False).encode(),
        CRYPTO_SCRIPT: crypto_script().encode(),
        SETUP_SCRIPT: setup_script(policy).encode(),
        # The same description `omnistock ledger fabric up` writes, for a client container mounting /fabric.
        LAYOUT.network_file: (json.dumps(netconfig.describe(
            LAYOUT, TOPOLOGY, policy, {o.key: package_id(chaincode_package(o)) for o in PEER_ORGS}), indent=2)
            + "\n").encode(),
    }
    for org in PEER_ORGS:
        written[LAYOUT.root / "chaincode" / f"{org.key}.tar.gz"] = chaincode_package(org)
    builder = Path(__file__).resolve().parent / "builder" / "bin"
    for step in ("detect", "build", "release"):
        written[BUILDER / "bin" / step] = (builder / step).read_bytes()
    paths = []
    for path, content in written.items():
        target = root / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        if target.suffix == ".sh" or target.parent.name == "bin":
            target.chmod(0o755)
        paths.append(target)
    return paths
