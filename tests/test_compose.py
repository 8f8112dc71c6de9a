"""docker-compose.yml cannot run here (no Docker engine), so check it against the code instead."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ledger import identity
from services import registry
from services.cli import main
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ONE_SHOT = ("postgres", "migrate", "ledger-init")
# Services of a profile (`fabric`) start only when it is asked for: not the default stack's.
DEFAULT_STACK = {name: spec for name, spec in COMPOSE["services"].items() if "profiles" not in spec}
APP_SERVICES = {name: spec for name, spec in DEFAULT_STACK.items() if name not in (*ONE_SHOT, "gateway")}
LEDGER_INIT = COMPOSE["services"]["ledger-init"]
MIGRATE = COMPOSE["services"]["migrate"]
GATEWAY = COMPOSE["services"]["gateway"]
GATEWAY_CONFIG = COMPOSE["configs"]["gateway"]["content"]
OWNER_URL = ("postgresql://omnistock:${OMNISTOCK_POSTGRES_PASSWORD:?set OMNISTOCK_POSTGRES_PASSWORD}"
             "@postgres:5432/omnistock")
SETTING_VARIABLES = {f"OMNISTOCK_{name.upper()}" for name in Settings.model_fields} | {"DATABASE_URL"}


def test_every_service_in_the_code_has_a_container_and_no_more() -> None:
    assert set(APP_SERVICES) == set(registry.service_names())


def test_postgres_is_version_16_with_a_health_check() -> None:
    postgres = COMPOSE["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "healthcheck" in postgres


def test_each_container_runs_omnistock_serve_for_itself() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["omnistock"]' in dockerfile
    for name, spec in APP_SERVICES.items():
        assert spec["command"] == ["serve", name]
        assert spec["build"] == "."
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert spec["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # The CLI really accepts that command line.
        result = CliRunner().invoke(main, ["serve", name, "--help"])
        assert result.exit_code == 0, result.output


def test_ports_match_the_settings_and_the_health_check() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for name, spec in APP_SERVICES.items():
        env: dict[str, Any] = spec["environment"]
        port = int(env[f"OMNISTOCK_{name.upper()}_PORT"])
        assert port == defaults.port_for(name)
        # Exposed to the gateway only: replicas of one service would contend for one published host port.
        assert spec["expose"] == [str(port)] and "ports" not in spec, name
        assert f"127.0.0.1:{port}/readyz" in " ".join(spec["healthcheck"]["test"])


def test_every_stateless_service_takes_the_replicas_setting_and_nothing_else_does() -> None:
    for name, spec in APP_SERVICES.items():
        assert spec["deploy"]["replicas"] == "${OMNISTOCK_REPLICAS:-1}", name
        assert "container_name" not in spec, name  # a fixed name allows one container
    for name in ("postgres", "migrate", "gateway"):
        assert "deploy" not in COMPOSE["services"][name], name


def test_the_gateway_publishes_each_service_port_and_balances_it_over_the_replicas() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    published = []
    for name in APP_SERVICES:
        port = defaults.port_for(name)
        published.append(f"{port}:{port}")
        assert GATEWAY["depends_on"][name]["condition"] == "service_healthy"
        # Every replica behind the service's DNS name, found again as replicas come and go.
        assert f"upstream {name} {{ zone {name} 64k; server {name}:{port} resolve;" in GATEWAY_CONFIG
        assert f"server {{ listen {port}; location / {{ proxy_pass http://{name}; }} }}" in GATEWAY_CONFIG
    assert GATEWAY["ports"] == published
    assert GATEWAY["configs"] == [{"source": "gateway", "target": "/etc/nginx/nginx.conf"}]
    # `resolve` on an upstream server needs nginx 1.27.3 or later.
    major, minor = (int(part) for part in GATEWAY["image"].removeprefix("nginx:").split("-")[0].split("."))
    assert (major, minor) >= (1, 28)


def test_the_gateway_streams_events_and_caps_connections_per_client_in_place_of_the_services() -> None:
    assert "proxy_buffering off;" in GATEWAY_CONFIG  # SSE frames reach the client as they are written
    assert "proxy_read_timeout 700s;" in GATEWAY_CONFIG  # past the long-running routes' deadline
    assert Settings.model_fields["long_request_timeout_s"].default < 700
    assert "limit_conn per_client 256;" in GATEWAY_CONFIG
    assert Settings.model_fields["max_connections_per_client"].default == 256
    # Compose interpolates `$name`: every nginx variable must be written `$$name`.
    assert "$" not in GATEWAY_CONFIG.replace("$$", "")
    for spec in APP_SERVICES.values():
        assert spec["environment"]["OMNISTOCK_MAX_CONNECTIONS_PER_CLIENT"] == "0"


def interpolated(value: str) -> str:
    """A value as compose would pass it: `${VAR:-default}` its default, `${VAR:?message}` some value."""
    value = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z0-9_]+:\?[^}]*\}", "secret", value)


def test_every_environment_variable_is_a_setting_the_code_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in APP_SERVICES.values():
        env = spec["environment"]
        assert set(env) <= SETTING_VARIABLES, set(env) - SETTING_VARIABLES
        assert env["OMNISTOCK_HOST"] == "0.0.0.0"
        with monkeypatch.context() as patch:  # read from the environment, as in the container (JSON lists too)
            for key, value in env.items():
                if key.startswith("OMNISTOCK_") and key != "OMNISTOCK_BOOTSTRAP_ADMIN_KEY":
                    patch.setenv(key, interpolated(str(value)))
            settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.host == "0.0.0.0"


def mounts(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """volume -> (path in the container, mode)."""
    found = {}
    for item in spec.get("volumes", []):
        volume, path, *mode = item.split(":")
        found[volume] = (path, mode[0] if mode else "rw")
    return found


def test_each_organisation_has_a_key_volume_only_its_own_service_mounts() -> None:
    """Each organisation signs where it runs: the ledger container holds the ledger's key, finance's
    holds finance's, and both read the public certificates; CA keys reach no service at all."""
    own_key = {"ledger": "ledger-key", "finance": "finance-key"}
    for name, spec in APP_SERVICES.items():
        volumes = mounts(spec)
        if name in own_key:
            assert set(volumes) == {own_key[name], "ledger-certs"}, name
            path, mode = volumes[own_key[name]]
            assert mode == "ro" and path == f"/data/ledger/keys/{name}"
            assert spec["environment"][f"OMNISTOCK_{name.upper()}_KEY_DIR"] == path
            assert volumes["ledger-certs"] == ("/data/ledger/msp", "ro")
            assert spec["depends_on"]["ledger-init"]["condition"] == "service_completed_successfully"
        else:
            assert not volumes, name  # stateless, and no ledger material at all
        assert spec["environment"]["OMNISTOCK_DATA_DIR"] == "/data"
    assert "ledger-ca" not in {v for spec in APP_SERVICES.values() for v in mounts(spec)}


def test_ledger_init_writes_each_identity_into_its_own_volume() -> None:
    assert LEDGER_INIT["command"] == ["ledger", "init"] and LEDGER_INIT["restart"] == "no"
    volumes = mounts(LEDGER_INIT)
    data = Path("/data")
    assert volumes["ledger-ca"] == (str(data / identity.OFFLINE_CA), "rw")
    assert volumes["ledger-certs"] == (str(identity.msp_dir(data)), "rw")
    assert volumes["ledger-key"][0] == str(identity.key_dir(data, "ledger"))
    assert volumes["finance-key"][0] == str(identity.key_dir(data, "finance"))
    assert set(LEDGER_INIT["environment"]) <= SETTING_VARIABLES
    assert "DATABASE_URL" not in LEDGER_INIT["environment"]  # it needs no database
    assert set(COMPOSE["volumes"]) >= {"ledger-ca", "ledger-certs", "ledger-key", "finance-key"}


def role_url(name: str) -> str:
    password = f"OMNISTOCK_{name.upper()}_DB_PASSWORD"
    return f"postgresql://omnistock_{name}:${{{password}:?set {password}}}@postgres:5432/omnistock"


def test_each_service_holds_only_its_own_roles_url_never_the_owners() -> None:
    for name, spec in APP_SERVICES.items():
        env = spec["environment"]
        assert "DATABASE_URL" not in env and "OMNISTOCK_DATABASE_URL" not in env, name
        urls = {key for key in env if key.endswith("_DATABASE_URL")}
        assert urls == {f"OMNISTOCK_{name.upper()}_DATABASE_URL"}, name
        assert env[f"OMNISTOCK_{name.upper()}_DATABASE_URL"] == role_url(name)
        assert "OMNISTOCK_BOOTSTRAP_ADMIN_KEY" not in env, name  # stored by migrate, as the owner


def test_migrate_runs_once_as_the_owner_with_every_roles_password_and_the_admin_key() -> None:
    env = MIGRATE["environment"]
    assert MIGRATE["command"] == ["migrate"] and MIGRATE["restart"] == "no"
    assert MIGRATE["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(env) <= SETTING_VARIABLES, set(env) - SETTING_VARIABLES
    assert env["DATABASE_URL"] == OWNER_URL
    for name in registry.service_names():
        assert env[f"OMNISTOCK_{name.upper()}_DATABASE_URL"] == role_url(name)
    assert "OMNISTOCK_BOOTSTRAP_ADMIN_KEY" in env


def test_the_database_has_no_default_password_and_no_published_port() -> None:
    postgres = COMPOSE["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${OMNISTOCK_POSTGRES_PASSWORD:?")
    assert "ports" not in postgres


# --- the `fabric` profile --------------------------------------------------------------------------------

FABRIC = {name: spec for name, spec in COMPOSE["services"].items() if "profiles" in spec}


def test_the_fabric_profile_is_one_orderer_two_peers_their_chaincode_and_three_one_shots() -> None:
    from ledger.fabric.names import ORDERER_COMPOSE_SERVICE, PEER_ORGS

    assert set(FABRIC) == {"fabric-config", "fabric-crypto", "fabric-setup", ORDERER_COMPOSE_SERVICE,
                           *(org.compose_service for org in PEER_ORGS),
                           *(f"fabric-chaincode-{org.key}" for org in PEER_ORGS)}
    for name, spec in FABRIC.items():
        assert spec["profiles"] == ["fabric"], name
    assert FABRIC[ORDERER_COMPOSE_SERVICE]["image"] == "hyperledger/fabric-orderer:2.5"
    for org in PEER_ORGS:
        assert FABRIC[org.compose_service]["image"] == "hyperledger/fabric-peer:2.5"
    assert FABRIC["fabric-crypto"]["image"] == FABRIC["fabric-setup"]["image"] == "hyperledger/fabric-tools:2.5"
    for name in ("fabric-config", "fabric-crypto", "fabric-setup"):
        assert FABRIC[name]["restart"] == "no", name


def test_the_fabric_nodes_are_configured_exactly_as_the_code_configures_them() -> None:
    """Every CORE_*/ORDERER_* value is what ledger/fabric/compose.py derives from the same functions
    that configure `omnistock ledger fabric up`: addresses, TLS files, MSP, LevelDB, builder."""
    from ledger.fabric import compose
    from ledger.fabric.names import ORDERER_COMPOSE_SERVICE, PEER_ORGS

    assert FABRIC[ORDERER_COMPOSE_SERVICE]["environment"] == compose.orderer_environment()
    for org in PEER_ORGS:
        spec = FABRIC[org.compose_service]
        assert spec["environment"] == compose.peer_environment(org), org.key
        gateway = compose.PORTS.peer(org)
        assert spec["ports"] == [f"127.0.0.1:{gateway}:{gateway}"]
        assert spec["depends_on"]["fabric-crypto"]["condition"] == "service_completed_successfully"


def test_each_organisations_chaincode_runs_from_the_one_image_with_its_package_id() -> None:
    from ledger.fabric import compose
    from ledger.fabric.names import PEER_ORGS
    from ledger.fabric.network import CHAINCODE_MODULE

    for org in PEER_ORGS:
        spec = FABRIC[f"fabric-chaincode-{org.key}"]
        assert spec["build"] == "."
        # The same module `ledger fabric up` starts; the image's entrypoint (omnistock) is replaced.
        assert spec["entrypoint"] == ["python", "-m", CHAINCODE_MODULE]
        env = spec["environment"]
        for key, value in compose.chaincode_environment(org).items():
            assert env[key] == value, key
        # The peer dials the address its package names, at the port the server listens on.
        assert compose.TOPOLOGY.chaincode_endpoint(org) == f"fabric-chaincode-{org.key}:{compose.PORTS.chaincode(org)}"
        assert env["CHAINCODE_SERVER_ADDRESS"].endswith(f":{compose.PORTS.chaincode(org)}")
        assert spec["expose"] == [str(compose.PORTS.chaincode(org))]
        omnistock = {key for key in env if key.startswith("OMNISTOCK_")} - {"OMNISTOCK_FABRIC_ORG"}
        assert omnistock <= SETTING_VARIABLES, omnistock - SETTING_VARIABLES
        assert mounts(spec) == {"ledger-certs": ("/data/ledger/msp", "ro")}  # certificates, never a key
        assert spec["depends_on"]["ledger-init"]["condition"] == "service_completed_successfully"


def test_the_one_shots_run_the_scripts_fabric_config_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.fabric import compose
    from ledger.fabric.names import PEER_ORGS

    config = FABRIC["fabric-config"]
    assert config["build"] == "."
    assert config["command"] == ["ledger", "fabric", "compose-config", str(compose.ROOT)]
    assert set(config["environment"]) <= SETTING_VARIABLES
    policy = interpolated(config["environment"]["OMNISTOCK_FABRIC_ENDORSEMENT_POLICY"])
    assert policy == Settings.model_fields["fabric_endorsement_policy"].default
    monkeypatch.setenv("OMNISTOCK_FABRIC_ENDORSEMENT_POLICY", policy)
    result = CliRunner().invoke(main, [*config["command"][:-1], str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, script in (("fabric-crypto", compose.CRYPTO_SCRIPT), ("fabric-setup", compose.SETUP_SCRIPT)):
        assert FABRIC[name]["command"] == ["sh", str(script)]
        written = tmp_path / script.relative_to(compose.ROOT)
        assert written.is_file(), name
    setup = (tmp_path / compose.SETUP_SCRIPT.relative_to(compose.ROOT)).read_text()
    assert subprocess.run(["sh", "-n", "-c", setup]).returncode == 0  # it parses
    assert "--signature-policy \"$POLICY\"" in setup
    policy_line = next(line for line in setup.splitlines() if line.startswith("POLICY="))
    shell = subprocess.run(["sh", "-c", f'{policy_line}; printf %s "$POLICY"'], capture_output=True, text=True)
    assert shell.stdout == policy  # what approve and commit are given, after the shell's quoting
    for step in ("detect", "build", "release"):
        assert (tmp_path / "builder" / "bin" / step).stat().st_mode & 0o111
    # The network's description for clients: compose hostnames, and the package ids the chaincode runs with.
    described = json.loads((tmp_path / "network.json").read_text())
    for org in PEER_ORGS:
        entry = described["orgs"][org.key]
        assert entry["peer_endpoint"] == f"{org.compose_service}:{compose.PORTS.peer(org)}"
        assert entry["package_id"] == FABRIC[f"fabric-chaincode-{org.key}"]["environment"]["CHAINCODE_ID"]
        assert entry["tls_ca"].startswith(str(compose.ROOT))


def test_every_fabric_volume_is_mounted_where_the_code_puts_that_data() -> None:
    from ledger.fabric import compose
    from ledger.fabric.names import ORDERER_COMPOSE_SERVICE, PEER_ORGS

    layout = compose.LAYOUT
    expected = {
        "fabric-config": {"fabric": (str(compose.ROOT), "rw")},
        "fabric-crypto": {"fabric": (str(compose.ROOT), "rw")},
        "fabric-setup": {"fabric": (str(compose.ROOT), "ro")},
        ORDERER_COMPOSE_SERVICE: {"fabric": (str(compose.ROOT), "ro"),
                                  "fabric-orderer-data": (str(layout.orderer_home / "data"), "rw")},
    }
    for org in PEER_ORGS:
        expected[org.compose_service] = {"fabric": (str(compose.ROOT), "ro"),
                                         f"{org.compose_service}-data": (str(layout.peer_home(org) / "data"), "rw")}
    for name, volumes in expected.items():
        assert mounts(FABRIC[name]) == volumes, name
        assert set(volumes) <= set(COMPOSE["volumes"]), name
    # Every path a node is told about lies in a volume it mounts.
    for org in PEER_ORGS:
        env = FABRIC[org.compose_service]["environment"]
        assert env["CORE_PEER_FILESYSTEMPATH"] == str(layout.peer_home(org) / "data")
        assert env["CORE_CHAINCODE_EXTERNALBUILDERS"] == f"[{{name: omnistock-ccaas, path: {compose.BUILDER}}}]"
    assert FABRIC[ORDERER_COMPOSE_SERVICE]["environment"]["ORDERER_FILELEDGER_LOCATION"].startswith(
        str(layout.orderer_home / "data"))


def test_fabric_setup_waits_for_every_node_and_chaincode() -> None:
    from ledger.fabric.names import ORDERER_COMPOSE_SERVICE, PEER_ORGS

    waits_for = set(FABRIC["fabric-setup"]["depends_on"])
    assert waits_for == {ORDERER_COMPOSE_SERVICE, *(o.compose_service for o in PEER_ORGS),
                         *(f"fabric-chaincode-{o.key}" for o in PEER_ORGS)}
    assert FABRIC["fabric-crypto"]["depends_on"]["fabric-config"]["condition"] == "service_completed_successfully"
