"""`omnistock import settlements FILE` and `omnistock reconcile --day`: the same use cases as the API."""

from __future__ import annotations

import json
import re
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


def _table_row(output: str) -> list[str]:
    """The cells of the summary table's one data row (received, inserted, already imported, batch, ...)."""
    rows = [line for line in output.splitlines() if re.match(r"^│\s+\d", line)]
    assert len(rows) == 1, output
    return [cell.strip() for cell in rows[0].strip("│").split("│")]


def test_big_csv_and_json_lines_files_stream_in_from_the_command_line(database_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    env = {**database_env, "OMNISTOCK_LOG_LEVEL": "warning"}
    rows = 30_000
    big = tmp_path / "day.csv"
    big.write_text("provider,external_id,order_id,amount,currency,settled_at\n" + "".join(
        f"cli,c{i},ORD-{i},{i}.{i % 100:02d},EUR,2024-05-01T10:00:00Z\n" for i in range(rows)))
    runner = CliRunner()
    done = runner.invoke(main, ["import", "settlements", str(big)], env=env)
    assert done.exit_code == 0, done.output
    assert _table_row(done.output)[:3] == [str(rows), str(rows), "0"]

    lines = [json.dumps({"provider": "cli-j", "external_id": f"j{i}", "order_id": f"ORD-{i}", "amount": "2.50",
                         "currency": "EUR", "settled_at": "2024-05-01T10:00:00Z"}) for i in range(5000)]
    bad = tmp_path / "bad.ndjson"
    bad.write_text("\n".join(lines[:2500] + [lines[2500].replace('"2.50"', '"2.505"')] + lines[2501:]) + "\n")
    refused = runner.invoke(main, ["import", "settlements", str(bad)], env=env)
    assert refused.exit_code == 1 and "line 2501: amount" in refused.output, refused.output
    good = tmp_path / "good.txt"  # no known suffix: the format is named
    good.write_text("\n".join(lines) + "\n")
    imported = runner.invoke(main, ["import", "settlements", "--format", "jsonl", str(good)], env=env)
    assert imported.exit_code == 0, imported.output
    assert _table_row(imported.output)[:3] == ["5000", "5000", "0"]  # the refused file left nothing behind
