"""`omnistock import settlements FILE` and `omnistock reconcile --day`: the same use cases as the API."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from services.cli import main

CSV = "provider,external_id,order_id,amount,currency,settled_at\nacme,c1,ghost,4.20,EUR,2024-05-01T10:00:00Z\n"


def test_import_then_reconcile_from_the_command_line(database_env: dict[str, str], tmp_path: Path) -> None:
    # The session's level: loggers first used while the command runs keep the level it configures.
    env = {**database_env, "OMNISTOCK_LOG_LEVEL": "warning"}
    file = tmp_path / "settlements.csv"
    file.write_text(CSV)
    runner = CliRunner()
    first = runner.invoke(main, ["import", "settlements", str(file)], env=env)
    assert first.exit_code == 0, first.output
    assert "│        1 │        1 │" in first.output
    again = runner.invoke(main, ["import", "settlements", str(file)], env=env)
    assert again.exit_code == 0 and "│        1 │        0 │" in again.output

    bad = tmp_path / "bad.csv"
    bad.write_text(CSV.replace("4.20", "4.201"))
    refused = runner.invoke(main, ["import", "settlements", str(bad)], env=env)
    assert refused.exit_code == 1 and "line 2: amount" in refused.output

    run = runner.invoke(main, ["reconcile", "--day", "2024-05-01"], env=env)
    assert run.exit_code == 0, run.output
    assert "missing_sale" in run.output and "│ missing_sale " in run.output
