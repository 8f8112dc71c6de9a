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
APP_SERVICES = {name: spec for name, spec in COMPOSE["services"].items() if name not in ("postgres", "migrate")}
MIGRATE = COMPOSE["services"]["migrate"]
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
        assert spec["ports"] == [f"{port}:{port}"]
        assert f"127.0.0.1:{port}/readyz" in " ".join(spec["healthcheck"]["test"])


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
