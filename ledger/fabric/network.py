"""A local Fabric 2.5 network from Fabric's release binaries: `omnistock ledger fabric up|down|status`.

One Raft orderer, one peer for the retailer and one for the audit firm (LevelDB, TLS, the Gateway
service on), the channel joined through the orderer's channel participation API, and the ledger's
chaincode run as a service: each organisation runs its own chaincode process, which its own peer
dials. Everything lives under the data folder (`fabric_dir`): crypto material, the genesis block,
each node's configuration and ledger, pid files and logs. `up` does only what is missing, so it also
restarts a stopped network; `down` stops every process it started and leaves nothing running.

The repository ships no Fabric binary: `fabric_bin` (OMNISTOCK_FABRIC_BIN) points at a folder holding
peer, orderer, configtxgen, osnadmin and cryptogen, and `fabric_config_dir` at the release's config/
(core.yaml, orderer.yaml), by default the `config` folder beside that bin folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ledger import identity
from ledger.fabric import lifecycle, netconfig, processes
from ledger.fabric.errors import FabricNetworkError
from ledger.fabric.layout import ORDERER_PROCESS, Layout, chaincode_process, peer_process
from ledger.fabric.names import (
    CHANNEL,
    ORDERER_HOST,
    PEER_ORGS,
    Org,
    Ports,
)
from shared.settings import Settings

BINARIES = ("peer", "orderer", "configtxgen", "osnadmin", "cryptogen")
BUILDER_DIR = Path(__file__).resolve().parent / "builder"
# The folder from which `python -m ledger.fabric.chaincode` imports this very checkout.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
CHAINCODE_MODULE = "ledger.fabric.chaincode"
CLI_TIMEOUT_S = 180.0


def fabric_dir(settings: Settings) -> Path:
    return settings.fabric_dir or settings.data_dir / "fabric"


class FabricNetwork:
    """The local network of one data folder."""

    start_timeout_s = 60.0  # for a node to say it is healthy, a definition to reach every peer

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout(fabric_dir(settings).resolve())
        self.ports = Ports(settings.fabric_port_base)
        self.topology = netconfig.Topology.local(self.ports, settings.fabric_host)
        self.policy = settings.fabric_endorsement_policy

    # --- where the binaries are ------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        if self.settings.fabric_bin is None:
            raise FabricNetworkError("set OMNISTOCK_FABRIC_BIN to the folder of Fabric 2.5's release binaries "
                                     f"({', '.join(BINARIES)})")
        return self.settings.fabric_bin.resolve()

    @property
    def config_dir(self) -> Path:
        return (self.settings.fabric_config_dir or self.bin_dir.parent / "config").resolve()

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    def check_binaries(self) -> None:
        missing = [name for name in BINARIES if not os.access(self.bin_dir / name, os.X_OK)]
        if missing:
            raise FabricNetworkError(f"OMNISTOCK_FABRIC_BIN={self.bin_dir} lacks {', '.join(missing)}")
        absent = [name for name in ("core.yaml", "orderer.yaml") if not (self.config_dir / name).is_file()]
        if absent:
            raise FabricNetworkError(f"{self.config_dir} lacks {', '.join(absent)} (the release's config/ folder; "
                                     "set OMNISTOCK_FABRIC_CONFIG_DIR)")

    # --- status ----------------------------------------------------------------------------------
    def process_names(self) -> list[str]:
        return [ORDERER_PROCESS, *(peer_process(o) for o in PEER_ORGS), *(chaincode_process(o) for o in PEER_ORGS)]

    def status(self) -> dict[str, int | None]:
        """Each process of the network and its pid, or None when it is not running."""
        return {name: processes.running_pid(self.layout, name) for name in self.process_names()}

    def description(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.layout.network_file.read_text())
        except (OSError, ValueError):
            return None

    # --- up ----------------------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:
        """Make and start whatever part of the network is missing; return network.json's contents."""
        self.check_binaries()
        self._check_same_ports()
        self._check_ports_free()
        running_before = {name for name, pid in self.status().items() if pid is not None}
        try:
            self._make_material()
            self._write_node_configs()
            self._start_orderer()
            self._join_orderer()
            for org in PEER_ORGS:
                self.start_peer(org)
            for org in PEER_ORGS:
                self._join_peer(org)
            package_ids = {org.key: lifecycle.install(self, org) for org in PEER_ORGS}
            # The chaincode checks submitters against the organisations' certificates, as the embedded
            # ledger does; like `omnistock up`, a first local run creates them (kept when present).
            identity.init_identities(self.settings.data_dir)
            for org in PEER_ORGS:
                self._start_chaincode(org, package_ids[org.key])
            lifecycle.define(self, package_ids)
        except BaseException:
            # A failed `up` leaves nothing running that it started, and stops nothing it found running
            # (another caller may be using that part of the network).
            for name in reversed(self.process_names()):
                if name not in running_before:
                    processes.stop(self.layout, name)
            raise
        description = self._describe(package_ids)
        self.layout.network_file.write_text(json.dumps(description, indent=2) + "\n")
        return description

    def _check_same_ports(self) -> None:
        try:
            made_with = int(self.layout.port_base_file.read_text())
        except (OSError, ValueError):
            return  # no genesis block yet: any base will do
        if made_with != self.ports.base:
            raise FabricNetworkError(
                f"the network in {self.layout.root} was made with port base {made_with}, not {self.ports.base}: "
                "its genesis block names those ports (down --purge to make it anew)")

    def _ports_of(self, name: str) -> list[int]:
        if name == ORDERER_PROCESS:
            return [self.ports.orderer, self.ports.orderer_admin, self.ports.orderer_operations]
        for org in PEER_ORGS:
            if name == peer_process(org):
                return [self.ports.peer(org), self.ports.peer_chaincode(org), self.ports.peer_operations(org)]
            if name == chaincode_process(org):
                return [self.ports.chaincode(org)]
        raise KeyError(name)

    def _check_ports_free(self) -> None:
        """Before starting anything, every port a stopped process will bind is free: a clear refusal
        naming the port instead of a node dying at start-up with it in its log."""
        taken = []
        for name, pid in self.status().items():
            if pid is None:
                taken += [port for port in self._ports_of(name) if not _port_free(self.settings.fabric_host, port)]
        if taken:
            raise FabricNetworkError(f"port(s) {', '.join(map(str, taken))} on {self.settings.fabric_host} are in use "
                                     "by another program: set OMNISTOCK_FABRIC_PORT_BASE to move the network")

    def _run(self, argv: list[str], env: dict[str, str] | None = None, what: str = "") -> str:
        try:
            done = subprocess.run(argv, env=env if env is not None else self._base_env(), capture_output=True,
                                  text=True, timeout=CLI_TIMEOUT_S, cwd=self.layout.root)
        except subprocess.TimeoutExpired:
            raise FabricNetworkError(f"{what or argv[0]}: no answer in {CLI_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-8:])
            raise FabricNetworkError(f"{what or Path(argv[0]).name} failed: {tail}")
        return done.stdout + done.stderr

    def _base_env(self, cfg: Path | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
               "FABRIC_LOGGING_SPEC": os.environ.get("FABRIC_LOGGING_SPEC", "INFO")}
        if cfg is not None:
            env["FABRIC_CFG_PATH"] = str(cfg)
        return env

    def _make_material(self) -> None:
        layout = self.layout
        layout.config.mkdir(parents=True, exist_ok=True)
        if not (layout.orderer_node / "tls" / "server.crt").is_file():
            shutil.rmtree(layout.crypto, ignore_errors=True)
            config = layout.config / "crypto-config.yaml"
            config.write_text(yaml.safe_dump(netconfig.crypto_config(), sort_keys=False))
            self._run([self.binary("cryptogen"), "generate", f"--config={config}", f"--output={layout.crypto}"],
                      what="cryptogen")
        if not layout.genesis_block.is_file():
            profile = netconfig.channel_profile(layout, self.topology, self.settings.fabric_batch_timeout_ms)
            (layout.config / "configtx.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
            layout.genesis_block.parent.mkdir(parents=True, exist_ok=True)
            layout.port_base_file.write_text(f"{self.ports.base}\n")
            self._run([self.binary("configtxgen"), "-configPath", str(layout.config), "-profile", netconfig.PROFILE,
                       "-channelID", CHANNEL, "-outputBlock", str(layout.genesis_block)],
                      env=self._base_env(layout.config), what="configtxgen")

    def _write_node_configs(self) -> None:
        """core.yaml and orderer.yaml: the release's, with this network's addresses, TLS and paths."""
        layout = self.layout
        layout.orderer_home.mkdir(parents=True, exist_ok=True)
        orderer = yaml.safe_load((self.config_dir / "orderer.yaml").read_text())
        netconfig.apply(orderer, netconfig.orderer_changes(layout, self.topology))
        (layout.orderer_home / "orderer.yaml").write_text(yaml.safe_dump(orderer, sort_keys=False))
        for org in PEER_ORGS:
            layout.peer_home(org).mkdir(parents=True, exist_ok=True)
            core = yaml.safe_load((self.config_dir / "core.yaml").read_text())
            netconfig.apply(core, netconfig.peer_changes(org, layout, self.topology, BUILDER_DIR))
            (layout.peer_home(org) / "core.yaml").write_text(yaml.safe_dump(core, sort_keys=False))

    def _wait_healthy(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://{self.settings.fabric_host}:{port}/healthz"
        while time.monotonic() < deadline:
            if processes.running_pid(self.layout, name) is None:
                raise FabricNetworkError(f"{name} exited:\n{processes.log_tail(self.layout, name)}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise FabricNetworkError(f"{name} not healthy after {self.start_timeout_s:.0f} s:\n"
                                 f"{processes.log_tail(self.layout, name)}")

    def _start_orderer(self) -> None:
        if processes.running_pid(self.layout, ORDERER_PROCESS) is None:
            processes.start(self.layout, ORDERER_PROCESS, [self.binary("orderer")],
                            self._base_env(self.layout.orderer_home), self.layout.orderer_home)
        self._wait_healthy(ORDERER_PROCESS, self.ports.orderer_operations)
        self._wait_listening(ORDERER_PROCESS, self.ports.orderer_admin)

    def _osnadmin(self, *args: str) -> str:
        admin_tls = self.layout.orderer_admin / "tls"
        return self._run([self.binary("osnadmin"), "channel", *args,
                          "-o", f"{self.settings.fabric_host}:{self.ports.orderer_admin}",
                          "--ca-file", str(self.layout.orderer_tls_ca),
                          "--client-cert", str(admin_tls / "client.crt"),
                          "--client-key", str(admin_tls / "client.key")], what=f"osnadmin channel {args[0]}")

    def _join_orderer(self) -> None:
        listed = self._osnadmin("list")
        if f'"name": "{CHANNEL}"' in listed or f'"name":"{CHANNEL}"' in listed:
            return
        self._osnadmin("join", "--channelID", CHANNEL, "--config-block", str(self.layout.genesis_block))

    def start_peer(self, org: Org) -> None:
        """Start `org`'s peer (if it is not running) and wait until it reports healthy."""
        name = peer_process(org)
        if processes.running_pid(self.layout, name) is None:
            processes.start(self.layout, name, [self.binary("peer"), "node", "start"],
                            self._base_env(self.layout.peer_home(org)), self.layout.peer_home(org))
        self._wait_healthy(name, self.ports.peer_operations(org))
        # Healthy is said on the operations port a moment before the gRPC listener accepts.
        self._wait_listening(name, self.ports.peer(org))

    def stop_peer(self, org: Org, *, crash: bool = False) -> bool:
        """Stop `org`'s peer only (its ledger stays): what a drill does to a required endorser.
        `crash` kills it at once (SIGKILL) instead of letting it shut down."""
        return processes.stop(self.layout, peer_process(org), grace_s=0.0 if crash else 10.0)

    @contextlib.contextmanager
    def peer_stopped(self, org: Org, *, crash: bool = False) -> Iterator[None]:
        """`org`'s peer is down inside the block and running (healthy) again after it, whatever happens."""
        self.stop_peer(org, crash=crash)
        try:
            yield
        finally:
            self.start_peer(org)

    def peer_cli_env(self, org: Org) -> dict[str, str]:
        """The `peer` CLI acting as `org`'s admin against `org`'s own peer."""
        return {
            **self._base_env(self.layout.peer_home(org)),
            "CORE_PEER_LOCALMSPID": org.msp_id,
            "CORE_PEER_MSPCONFIGPATH": str(self.layout.user(org, "Admin") / "msp"),
            "CORE_PEER_ADDRESS": self.topology.peer_endpoint(org),
            "CORE_PEER_TLS_ENABLED": "true",
            "CORE_PEER_TLS_ROOTCERT_FILE": str(self.layout.tls_ca(org)),
        }

    def peer_cli(self, org: Org, *args: str) -> str:
        return self._run([self.binary("peer"), *args], env=self.peer_cli_env(org),
                         what=f"peer {' '.join(args[:3])} ({org.key})")

    def orderer_args(self) -> list[str]:
        return ["-o", self.topology.orderer_endpoint(), "--ordererTLSHostnameOverride", ORDERER_HOST,
                "--tls", "--cafile", str(self.layout.orderer_tls_ca)]

    def _join_peer(self, org: Org) -> None:
        if CHANNEL in self.peer_cli(org, "channel", "list").split():
            return
        self.peer_cli(org, "channel", "join", "-b", str(self.layout.genesis_block))

    # --- the chaincode -----------------------------------------------------------------------------
    def _start_chaincode(self, org: Org, pid: str) -> None:
        name = chaincode_process(org)
        if processes.running_pid(self.layout, name) is not None:
            return
        env = {**os.environ,
               "CHAINCODE_SERVER_ADDRESS": f"{self.topology.listen_host}:{self.ports.chaincode(org)}",
               "CHAINCODE_ID": pid,
               # The chaincode checks submitters against our organisations' CAs (the trust directory
               # under the data dir, made by `omnistock ledger init`), as the embedded backend does.
               "OMNISTOCK_DATA_DIR": str(self.settings.data_dir.resolve()),  # it runs from SOURCE_ROOT
               "OMNISTOCK_FABRIC_ORG": org.key}
        processes.start(self.layout, name, [sys.executable, "-m", CHAINCODE_MODULE], env, SOURCE_ROOT)
        self._wait_listening(name, self.ports.chaincode(org))

    def _wait_listening(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if processes.running_pid(self.layout, name) is None:
                raise FabricNetworkError(f"{name} exited:\n{processes.log_tail(self.layout, name)}")
            try:
                with socket.create_connection((self.settings.fabric_host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise FabricNetworkError(f"{name} not listening on {port} after {self.start_timeout_s:.0f} s")

    def committed_definition(self) -> dict[str, Any] | None:
        """The chaincode definition committed on the channel (sequence, approvals, validation
        parameter: the endorsement policy), or None before the first commit."""
        return lifecycle.committed_definition(self)

    def _describe(self, package_ids: dict[str, str]) -> dict[str, Any]:
        described = netconfig.describe(self.layout, self.topology, self.policy, package_ids)
        for org in PEER_ORGS:
            described["orgs"][org.key]["logs"] = {"peer": str(self.layout.log_file(peer_process(org))),
                                                  "chaincode": str(self.layout.log_file(chaincode_process(org)))}
        return described

    # --- down --------------------------------------------------------------------------------------
    def down(self, *, purge: bool = False) -> list[str]:
        """Stop every process of the network (chaincode, peers, orderer); the names that were running.
        `purge` also deletes the data folder: crypto material, ledgers, logs."""
        stopped = [name for name in reversed(self.process_names()) if processes.stop(self.layout, name)]
        if purge:
            shutil.rmtree(self.layout.root, ignore_errors=True)
        return stopped


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
