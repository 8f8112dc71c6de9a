"""The local Fabric network: its configuration and packages (always), and the network itself from
Fabric's release binaries (when OMNISTOCK_FABRIC_BIN is set; skipped, saying so, otherwise)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from fabric_protos.common import policies_pb2
from fabric_protos.msp import msp_principal_pb2
from fabric_protos.peer import policy_pb2

from ledger.fabric import netconfig, processes
from ledger.fabric.layout import Layout, chaincode_process, peer_process
from ledger.fabric.names import (
    AUDIT,
    AUDIT_MSP,
    CHAINCODE_LABEL,
    CHAINCODE_NAME,
    CHANNEL,
    DEFAULT_ENDORSEMENT_POLICY,
    PEER_ORGS,
    RETAILER,
    RETAILER_MSP,
    Ports,
)
from ledger.fabric.network import BUILDER_DIR, FabricNetwork, FabricNetworkError
from ledger.fabric.package import ccaas_package, package_id
from services.cli import main
from shared.settings import DEFAULT_PORTS, Settings
from tests.ledger.fabric.conftest import SKIP_REASON, TEST_PORT_BASE, network_settings

# --- configuration, packages and the builder: no binaries needed -------------------------------------


def test_the_default_policy_setting_is_both_organisations_peers() -> None:
    assert Settings.model_fields["fabric_endorsement_policy"].default == DEFAULT_ENDORSEMENT_POLICY
    assert DEFAULT_ENDORSEMENT_POLICY == "AND('RetailerMSP.peer','AuditMSP.peer')"


def test_every_port_is_distinct_and_clear_of_the_services_and_postgres() -> None:
    for base in (Settings.model_fields["fabric_port_base"].default, TEST_PORT_BASE):
        ports = Ports(base).all()
        assert len(ports) == len(set(ports))
        assert not set(ports) & {*DEFAULT_PORTS.values(), 8080, 5432, Settings.model_fields["embedded_pg_port"].default}
    assert not set(Ports(7050).all()) & set(Ports(TEST_PORT_BASE).all())


def test_the_genesis_profile_needs_both_organisations_for_a_chaincode_definition(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    topology = netconfig.Topology.local(Ports(7050), "127.0.0.1")
    profile = netconfig.channel_profile(layout, topology, 250)["Profiles"][netconfig.PROFILE]
    application = profile["Application"]
    assert application["Policies"]["LifecycleEndorsement"] == {"Type": "ImplicitMeta", "Rule": "MAJORITY Endorsement"}
    assert [org["ID"] for org in application["Organizations"]] == [RETAILER_MSP, AUDIT_MSP]
    for org, spec in zip(PEER_ORGS, application["Organizations"], strict=True):
        assert spec["Policies"]["Endorsement"]["Rule"] == f"OR('{org.msp_id}.peer')"
        assert spec["AnchorPeers"] == [{"Host": "127.0.0.1", "Port": topology.ports.peer(org)}]
    assert profile["Orderer"]["OrdererType"] == "etcdraft"
    assert profile["Orderer"]["BatchTimeout"] == "250ms"
    assert len(profile["Orderer"]["EtcdRaft"]["Consenters"]) == 1


def test_crypto_material_has_node_roles_and_names_every_address_a_node_is_dialled_by() -> None:
    config = netconfig.crypto_config()
    for org in [*config["OrdererOrgs"], *config["PeerOrgs"]]:
        assert org["EnableNodeOUs"] is True  # 'RetailerMSP.peer' in a policy needs the peer role in the cert
        assert {"localhost", "127.0.0.1"} <= set(org["Specs"][0]["SANS"])
    assert {RETAILER.compose_service, AUDIT.compose_service} <= {
        san for org in config["PeerOrgs"] for san in org["Specs"][0]["SANS"]}


def test_a_peer_runs_without_docker_on_leveldb_with_tls_and_the_gateway(tmp_path: Path) -> None:
    changes = netconfig.peer_changes(AUDIT, Layout(tmp_path), netconfig.Topology.local(Ports(7050), "127.0.0.1"),
                                     BUILDER_DIR)
    assert changes["vm.endpoint"] == ""
    assert changes["ledger.state.stateDatabase"] == "goleveldb"
    assert changes["peer.tls.enabled"] is True and changes["peer.gateway.enabled"] is True
    assert changes["chaincode.externalBuilders"] == [{"name": netconfig.BUILDER_NAME, "path": str(BUILDER_DIR)}]
    assert changes["peer.gossip.externalEndpoint"] == "127.0.0.1:7061"


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_ccaas_package_is_reproducible_and_names_its_chaincode_server() -> None:
    package = ccaas_package("127.0.0.1:7055")
    assert package == ccaas_package("127.0.0.1:7055")  # so its id is known before a peer computes it
    assert package != ccaas_package("127.0.0.1:7065")
    outer = _members(package)
    assert json.loads(outer["metadata.json"]) == {"type": "ccaas", "label": CHAINCODE_LABEL}
    assert json.loads(_members(outer["code.tar.gz"])["connection.json"])["address"] == "127.0.0.1:7055"
    pid = package_id(package)
    label, digest = pid.split(":")
    assert label == CHAINCODE_LABEL and len(digest) == 64 and int(digest, 16) >= 0


def _builder(step: str, *args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUILDER_DIR / "bin" / step), *map(str, args)], capture_output=True, text=True)


def test_the_builder_detects_ccaas_packages_only(tmp_path: Path) -> None:
    source, metadata = tmp_path / "src", tmp_path / "meta"
    source.mkdir()
    metadata.mkdir()
    (metadata / "metadata.json").write_text('{\n  "label": "x",\n  "type" : "ccaas"\n}')
    assert _builder("detect", source, metadata).returncode == 0
    (metadata / "metadata.json").write_text('{"type": "golang", "label": "ccaas"}')
    assert _builder("detect", source, metadata).returncode != 0
    (metadata / "metadata.json").unlink()
    assert _builder("detect", source, metadata).returncode != 0


def test_the_builder_releases_connection_json_and_refuses_a_package_without_an_address(tmp_path: Path) -> None:
    source, metadata, output, release = (tmp_path / name for name in ("src", "meta", "out", "rel"))
    for folder in (source, metadata, output, release):
        folder.mkdir()
    refused = _builder("build", source, metadata, output)
    assert refused.returncode != 0 and "connection.json" in refused.stderr
    (source / "connection.json").write_text('{"address": "", "tls_required": false}')
    refused = _builder("build", source, metadata, output)
    assert refused.returncode != 0 and "address" in refused.stderr
    connection = json.dumps(netconfig.connection_json("127.0.0.1:7055"))
    (source / "connection.json").write_text(connection)
    assert _builder("build", source, metadata, output).returncode == 0
    assert _builder("release", output, release).returncode == 0
    assert (release / "chaincode" / "server" / "connection.json").read_text() == connection


def test_a_process_is_stopped_by_its_pid_file_and_a_reused_pid_is_not_taken_for_it(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    pid = processes.start(layout, "sleeper", ["/bin/sleep", "60"], {"PATH": "/bin:/usr/bin"}, tmp_path)
    assert processes.running_pid(layout, "sleeper") == pid
    with pytest.raises(RuntimeError, match="already running"):
        processes.start(layout, "sleeper", ["/bin/sleep", "60"], {}, tmp_path)
    assert processes.stop(layout, "sleeper") is True
    assert not processes.pid_alive(pid) and not layout.pid_file("sleeper").exists()
    # A pid file whose pid now belongs to another live process (this test runner): its start time differs.
    layout.pid_file("orderer").write_text(f"{os.getpid()}\n1\n/opt/fabric/bin/orderer\n")
    assert processes.running_pid(layout, "orderer") is None
    assert processes.stop(layout, "orderer") is False
    assert processes.pid_alive(os.getpid())


def test_without_the_binaries_up_refuses_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNISTOCK_FABRIC_BIN", raising=False)
    monkeypatch.setenv("OMNISTOCK_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["ledger", "fabric", "up"])
    assert result.exit_code == 1 and "OMNISTOCK_FABRIC_BIN" in result.output
    empty = tmp_path / "bin"
    empty.mkdir()
    (empty / "peer").write_text("#!/bin/sh\n")
    (empty / "peer").chmod(0o755)
    network = FabricNetwork(Settings(fabric_bin=empty, data_dir=tmp_path))  # type: ignore[call-arg]
    with pytest.raises(FabricNetworkError, match="lacks orderer, configtxgen, osnadmin, cryptogen"):
        network.up()


def _marking_binaries(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder whose programs only leave a mark that they ran, and a config folder beside it."""
    bin_dir, config = tmp_path / "bin", tmp_path / "config"
    bin_dir.mkdir()
    config.mkdir()
    for name in ("peer", "orderer", "configtxgen", "osnadmin", "cryptogen"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {tmp_path}/ran-{name}\n")
        (bin_dir / name).chmod(0o755)
    for name in ("core.yaml", "orderer.yaml"):
        (config / name).write_text("{}\n")
    return bin_dir, config


def test_up_refuses_another_port_base_than_the_genesis_block_was_made_for(tmp_path: Path) -> None:
    bin_dir, config = _marking_binaries(tmp_path)
    layout = Layout(tmp_path / "fabric")
    layout.port_base_file.parent.mkdir(parents=True)
    layout.port_base_file.write_text("7050\n")
    network = FabricNetwork(Settings(fabric_bin=bin_dir, fabric_dir=layout.root, data_dir=tmp_path,  # type: ignore[call-arg]
                                     fabric_port_base=7350))
    with pytest.raises(FabricNetworkError, match="made with port base 7050, not 7350"):
        network.up()
    assert not list(tmp_path.glob("ran-*"))


def test_up_refuses_a_port_in_use_before_running_anything(tmp_path: Path) -> None:
    """Binaries that would leave a mark if run: a busy port stops `up` before any of them is."""
    bin_dir, config = _marking_binaries(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        base = port - Ports(0).peer(AUDIT)  # the audit peer's port is the one taken
        if base < 1024:
            pytest.skip("the port the system gave leaves no valid base below it")
        network = FabricNetwork(Settings(fabric_bin=bin_dir, fabric_config_dir=config, data_dir=tmp_path,  # type: ignore[call-arg]
                                         fabric_port_base=base))
        with pytest.raises(FabricNetworkError, match=f"{port}.*OMNISTOCK_FABRIC_PORT_BASE"):
            network.up()
    assert not list(tmp_path.glob("ran-*"))
    assert not any(network.status().values())


def test_status_of_a_network_never_started_is_all_stopped_and_exits_1(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISTOCK_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["ledger", "fabric", "status", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output) == dict.fromkeys(
        ["orderer", "peer-retailer", "peer-audit", "chaincode-retailer", "chaincode-audit"])


# --- the network itself ----------------------------------------------------------------------------

def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def _signature_policy(network: FabricNetwork) -> policies_pb2.SignaturePolicyEnvelope:
    committed = network.committed_definition()
    assert committed is not None
    application = policy_pb2.ApplicationPolicy.FromString(base64.b64decode(committed["validation_parameter"]))
    return application.signature_policy


def test_the_network_runs_every_process_and_describes_itself(fabric_network: FabricNetwork) -> None:
    assert all(fabric_network.status().values()), fabric_network.status()
    described = fabric_network.description()
    assert described is not None
    assert described["channel"] == CHANNEL and described["chaincode"] == CHAINCODE_NAME
    for org in PEER_ORGS:
        entry = described["orgs"][org.key]
        assert entry["msp_id"] == org.msp_id
        for path in (entry["tls_ca"], entry["ca_cert"], entry["users"]["User1"]["cert"],
                     entry["users"]["User1"]["key"]):
            assert Path(path).is_file(), path
        assert CHANNEL in fabric_network.peer_cli(org, "channel", "list").split()


def test_the_committed_definition_requires_both_organisations_peers(fabric_network: FabricNetwork) -> None:
    """Read back from the channel, not from our settings: AND of RetailerMSP.peer and AuditMSP.peer."""
    envelope = _signature_policy(fabric_network)
    principals = []
    for identity in envelope.identities:
        role = msp_principal_pb2.MSPRole.FromString(identity.principal)
        principals.append((role.msp_identifier, role.role))
    assert principals == [(RETAILER_MSP, msp_principal_pb2.MSPRole.PEER), (AUDIT_MSP, msp_principal_pb2.MSPRole.PEER)]
    rule = envelope.rule.n_out_of
    assert rule.n == 2 and len(rule.rules) == 2  # two of two: AND
    assert {r.signed_by for r in rule.rules} == {0, 1}


def test_up_again_changes_nothing_that_runs(fabric_network: FabricNetwork) -> None:
    before = fabric_network.status()
    described = fabric_network.up()
    assert fabric_network.status() == before
    assert described["orgs"]["retailer"]["package_id"] == fabric_network.description()["orgs"]["retailer"]["package_id"]


def test_a_stopped_peer_comes_back_with_its_ledger(fabric_network: FabricNetwork) -> None:
    def height() -> int:
        out = fabric_network.peer_cli(AUDIT, "channel", "getinfo", "-c", CHANNEL)
        found = re.search(r'"height":(\d+)', out)
        assert found, out
        return int(found.group(1))

    before = height()
    old_pid = fabric_network.status()[peer_process(AUDIT)]
    port = fabric_network.ports.peer(AUDIT)
    with fabric_network.peer_stopped(AUDIT, crash=True):
        assert fabric_network.status()[peer_process(AUDIT)] is None
        assert old_pid is not None and not processes.pid_alive(old_pid)
        assert not _listening(fabric_network.settings.fabric_host, port)
        assert fabric_network.status()[peer_process(RETAILER)] is not None  # only that one peer
    assert fabric_network.status()[peer_process(AUDIT)] not in (None, old_pid)
    assert height() >= before


def _free_base(start: int) -> int:
    """The first base from `start` (in steps of 30) whose ports nobody listens on: other test runs on
    this machine may have networks of their own."""
    for base in range(start, start + 30 * 20, 30):
        if not any(_listening("127.0.0.1", port) for port in Ports(base).all()):
            return base
    raise AssertionError(f"no free Fabric port base from {start}")


def test_up_then_down_leaves_no_process_and_no_port(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A network of its own (ports 30 above the shared one's), so the shared one keeps running."""
    if not os.environ.get("OMNISTOCK_FABRIC_BIN"):
        pytest.skip(SKIP_REASON)
    base = _free_base(int(os.environ.get("OMNISTOCK_FABRIC_PORT_BASE", TEST_PORT_BASE)) + 30)
    network = FabricNetwork(network_settings(tmp_path_factory.mktemp("fabric-updown"), base))
    try:
        network.up()
        pids = network.status()
        assert all(pids.values()), pids
        assert {chaincode_process(org) for org in PEER_ORGS} <= set(pids)
        # A changed endorsement policy is committed as the next definition, approved by both again.
        either = "OR('RetailerMSP.peer','AuditMSP.peer')"
        relaxed = FabricNetwork(network.settings.model_copy(update={"fabric_endorsement_policy": either}))
        assert relaxed.up()["endorsement_policy"] == either
        definition = relaxed.committed_definition()
        assert definition is not None and definition["sequence"] == 2
        assert definition["approvals"] == {RETAILER_MSP: True, AUDIT_MSP: True}
        assert _signature_policy(relaxed).rule.n_out_of.n == 1
        assert relaxed.status() == pids  # nothing restarted for it
    finally:
        stopped = network.down()
    assert sorted(stopped) == sorted(pids)
    for name, pid in pids.items():
        assert pid is not None and not processes.pid_alive(pid), name
    for port in network.ports.all():
        assert not _listening(network.settings.fabric_host, port), port
    assert network.status() == dict.fromkeys(pids)
    # And the CLI agrees, from a separate process as an operator would run it.
    env = {**os.environ, "OMNISTOCK_DATA_DIR": str(network.layout.root.parent),
           "OMNISTOCK_FABRIC_PORT_BASE": str(base)}
    status = subprocess.run([sys.executable, "-c", "from services.cli import main; main()", "ledger", "fabric",
                             "status"], env=env, capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert status.returncode == 1 and "stopped" in status.stdout
