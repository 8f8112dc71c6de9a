"""`omnistock import settlements FILE` and `omnistock reconcile --day YYYY-MM-DD`: thin shells over the
finance use cases, with a progress bar and a summary table."""

from __future__ import annotations

import getpass
import json
from collections.abc import AsyncIterator, Callable
from datetime import date
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from services.finance import use_cases
from services.finance.schemas import ImportOut, RunIn, RunOut
from services.finance.settlement_file import SUFFIXES, Kind, RowErrors, SettlementFile
from shared.db import create_pool
from shared.errors import Problem
from shared.roles import service_dsn
from shared.settings import Settings

console = Console(stderr=True)
COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
BYTE_COLUMNS = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeElapsedColumn())


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _fail(problem: Problem) -> click.ClickException:
    lines = [problem.detail]
    for error in problem.extra.get("errors", [])[:50]:
        where = f"line {error['line']}: " if "line" in error else ""
        lines.append(f"  {where}{error['field']}: {error['problem']}")
    return click.ClickException("\n".join(lines))


@click.group("import")
def import_group() -> None:
    """Import finance data."""


CHUNK_BYTES = 1 << 20


async def _file_chunks(file: Path, on_read: Callable[[int], None]) -> AsyncIterator[bytes]:
    """The file a chunk at a time, as the API reads a body (a local disk answers within microseconds)."""
    with file.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            on_read(len(chunk))
            yield chunk


@import_group.command("settlements")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "kind", type=click.Choice(["csv", "jsonl", "json"]), default=None,
              help="The file's format (default: by its suffix, .csv, .jsonl/.ndjson or .json; else CSV).")
@click.option("--reimport-voided", is_flag=True, help="Import rows identical to a voided settlement too.")
def import_settlements(file: Path, kind: Kind | None, reimport_voided: bool) -> None:
    """Import a settlement file (CSV with a header line, JSON lines, or a JSON list); all rows or none.

    CSV and JSON lines stream into the database as they are read, whatever their size."""
    from services.cli import _run

    kind = kind or SUFFIXES.get(file.suffix.lower(), "csv")
    items = _json_list(file) if kind == "json" else None
    size = file.stat().st_size

    async def go(settings: Settings) -> ImportOut:
        pool = await create_pool(service_dsn(settings, "finance"), min_size=1, max_size=2,
                                 command_timeout=3600)
        try:
            with Progress(*BYTE_COLUMNS, console=console) as progress:
                task = progress.add_task(f"importing {file.name}", total=size)
                settlements = SettlementFile(kind, RowErrors())
                batches = (settlements.listed(items) if items is not None
                           else settlements.batches(_file_chunks(file, lambda n: progress.advance(task, n))))
                result = await use_cases.import_settlements(pool, settlements, batches, f"cli:{file.name}",
                                                            _actor(), reimport_voided)
                progress.update(task, completed=size)
            return ImportOut.model_validate(result.body)
        except Problem as problem:
            raise _fail(problem) from None
        finally:
            await pool.close()

    result = _run(go)
    table = Table(title=f"settlements from {file.name}")
    for column in ("received", "inserted", "already imported", "batch", "skipped: voided"):
        table.add_column(column, justify="right")
    table.add_row(str(result.received), str(result.inserted), str(result.already_imported), str(result.batch_id or "-"),
                  str(result.skipped_voided))
    Console().print(table)


def _json_list(file: Path) -> list[Any]:
    """A JSON list is parsed whole (it has no line to stop at): for small files; send big ones as JSON lines."""
    try:
        items = json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file} is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise click.ClickException(f"{file} must hold a JSON list of objects")
    return items


@click.command("reconcile")
@click.option("--day", "day", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="The business day.")
@click.option("--channel", type=click.Choice(["online", "store"]), default=None)
@click.option("--location", "location_id", default=None, help="Only this location's sales.")
def reconcile(day: date, channel: str | None, location_id: str | None) -> None:
    """Reconcile a business day into a new run (superseding the previous run of the same scope)."""
    from services.cli import _run

    async def go(settings: Settings) -> RunOut:
        pool = await create_pool(service_dsn(settings, "finance"), min_size=2, max_size=3, command_timeout=3600)
        try:
            with Progress(*COLUMNS, console=console) as progress:
                task = progress.add_task(f"reconciling {day:%Y-%m-%d}", total=None)
                body = RunIn(business_day=day.date() if hasattr(day, "date") else day, channel=channel,
                             location_id=location_id)
                return await use_cases.run_reconciliation(
                    pool, body, _actor(), use_cases.tolerances(settings),
                    on_total=lambda n: progress.update(task, total=n),
                    on_progress=lambda n: progress.advance(task, n))
        except Problem as problem:
            raise _fail(problem) from None
        finally:
            await pool.close()

    Console().print(summary_table(_run(go)))


def summary_table(run: RunOut) -> Table:
    table = Table(title=f"run {run.id} · {run.business_day} · {run.channel or 'all channels'} · "
                        f"{run.location_id or 'all locations'} · {run.status}")
    table.add_column("class")
    table.add_column("items", justify="right")
    for cls, count in run.counts.model_dump().items():
        table.add_row(cls, str(count))
    for total in run.totals:
        table.add_row(f"{total.currency} sales / expected / paid", f"{total.sales} / {total.expected} / {total.paid}")
    table.add_row("supersedes", str(run.supersedes or "-"))
    table.add_row("items root", run.items_root[:16] + "…")
    return table
