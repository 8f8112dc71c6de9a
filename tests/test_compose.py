"""docker-compose.yml cannot run here (no Docker engine), so check it against the code instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from services import registry
from services.cli import main
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APP_SERVICES = {name: spec for name, spec in COMPOSE["services"].items()
                if name not in ("postgres", "migrate", "gateway")}
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


def test_every_environment_variable_is_a_setting_the_code_reads() -> None:
    for spec in APP_SERVICES.values():
        env = spec["environment"]
        assert set(env) <= SETTING_VARIABLES, set(env) - SETTING_VARIABLES
        assert env["OMNISTOCK_HOST"] == "0.0.0.0"
        settings = Settings(_env_file=None, **{  # type: ignore[call-arg]
            key.removeprefix("OMNISTOCK_").lower(): value for key, value in env.items()
            if key.startswith("OMNISTOCK_") and key != "OMNISTOCK_BOOTSTRAP_ADMIN_KEY"
        })
        assert settings.host == "0.0.0.0"


def test_finance_and_ledger_share_the_ledger_identities() -> None:
    """Finance signs its appends with the finance identity the ledger service created under /data."""
    volumes = {name: APP_SERVICES[name].get("volumes", []) for name in ("finance", "ledger")}
    assert "ledgerdata:/data" in volumes["finance"] and "ledgerdata:/data" in volumes["ledger"]
    assert APP_SERVICES["finance"]["environment"]["OMNISTOCK_DATA_DIR"] == "/data"


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
