"""The `omnistock` command: a thin shell over the same use cases the HTTP routes call."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ledger.cli import ledger as ledger_commands
from ledger.identity import init_identities
from services import registry, runtime
from services.ecommerce.cli import ecommerce as ecommerce_commands
from services.finance.cli import import_group, reconcile
from shared.auth import ROLES, create_api_key
from shared.db import create_pool
from shared.logging import configure_logging
from shared.roles import service_dsn
from shared.settings import Settings

T = TypeVar("T")
console = Console(stderr=True)
DEMO_STORES, DEMO_SKUS = 25, 500


def _run(coro_fn: Callable[[Settings], Awaitable[T]], *, force_grants: bool = False) -> T:
    """Resolve the database (embedded when DATABASE_URL is unset), migrate, and run `coro_fn`."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    with runtime.database(settings) as ready:

        async def main() -> T:
            await runtime.migrate(ready, force_grants=force_grants)
            return await coro_fn(ready)

        return _asyncio_run(main())


def _asyncio_run(coro: Awaitable[T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


@click.group()
def main() -> None:
    """omnistock: one truth about stock and sales across stores, online shop and warehouses."""


@main.command()
@click.option("--demo", is_flag=True, help="Seed demo data and print one API key per role.")
def up(demo: bool) -> None:
    """Run every service until SIGINT/SIGTERM."""

    async def go(settings: Settings) -> None:
        # Every service in this one process, so every organisation's member key is in it too (and the
        # CA keys are created here on a first start): the separation is per `omnistock serve NAME`.
        init_identities(settings.data_dir)
        ready = asyncio.Event()
        server = asyncio.create_task(runtime.serve(settings, registry.service_names(), ready))
        await ready.wait()
        if demo:
            await _demo(settings)
        for name in registry.service_names():
            click.echo(f"{name:<10} {settings.base_url(name)}")
        click.echo("omnistock is up; Ctrl-C stops it.")
        await server

    _run(go)


async def _demo(settings: Settings) -> None:
    from services.inventory import repository as inventory_repo
    from services.inventory import use_cases as inventory

    pool = await create_pool(_owner_dsn(settings), min_size=1, max_size=2)
    try:
        if not await inventory_repo.list_locations(pool):
            await inventory.seed(pool, DEMO_STORES, DEMO_SKUS)
        first_store = (await inventory_repo.list_locations(pool))[0]["id"]
        async with pool.acquire() as conn:
            for role in ROLES:
                location = first_store if role == "store" else None
                key = await create_api_key(conn, role, location, label="demo")
                where = f" ({location})" if location else ""
                click.echo(f"{role + where:<24} {key}")
    finally:
        await pool.close()


@main.command()
@click.argument("name", type=click.Choice(registry.service_names()))
def serve(name: str) -> None:
    """Run one service (what each docker-compose container runs)."""
    _run(lambda settings: runtime.serve(settings, [name]))


@main.command()
def migrate() -> None:
    """Apply pending migrations of every service, then the service roles' logins and grants."""

    async def go(settings: Settings) -> None:
        _owner_dsn(settings)

    _run(go, force_grants=True)
    click.echo("migrations applied")


def _owner_dsn(settings: Settings) -> str:
    """Admin commands work as the database owner: they need DATABASE_URL (or the embedded database)."""
    if not settings.database_url:
        raise click.UsageError("this command needs the database owner's DATABASE_URL")
    return settings.database_url


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--location", "location_id", default=None, help="The location a store key is bound to.")
@click.option("--label", default=None)
def keys_create(role: str, location_id: str | None, label: str | None) -> None:
    """Create an API key; the key is the last word printed."""
    if (role == "store") != (location_id is not None):
        raise click.UsageError("--location is required for --role store, and only for it")

    async def go(settings: Settings) -> str:
        pool = await create_pool(_owner_dsn(settings), min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                if location_id is not None and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM inventory.locations WHERE id = $1)", location_id
                ):
                    raise click.UsageError(f"unknown location '{location_id}'")
                return await create_api_key(conn, role, location_id, label)
        finally:
            await pool.close()

    key = _run(go)
    click.echo(f"created {role} key{f' for {location_id}' if location_id else ''}: {key}")


@main.command()
@click.option("--stores", default=DEMO_STORES, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--skus", default=DEMO_SKUS, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--density", default=1.0, show_default=True, type=click.FloatRange(0.001, 1.0),
              help="Share of SKUs each location stocks.")
def seed(stores: int, skus: int, density: float) -> None:
    """Seed demo locations, SKUs and stock."""
    from services.inventory import use_cases as inventory

    async def go(settings: Settings) -> tuple[int, int, int]:
        pool = await create_pool(service_dsn(settings, "inventory"), min_size=1, max_size=2, command_timeout=3600)
        columns = (TextColumn("seeding stock"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("locations", total=stores + max(1, stores // 100))
                return await inventory.seed(pool, stores, skus, per_mille=round(density * 1000),
                                            on_location=lambda n: progress.advance(task, n))
        finally:
            await pool.close()

    locations, catalog, levels = _run(go)
    click.echo(f"seeded {locations} locations, {catalog} SKUs, {levels} stock levels")


# --- backup and restore (services/backup/) -------------------------------------------------------


@main.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(1, 32),
              help="Tables pg_dump dumps at a time (one connection each).")
def backup_command(directory: Path, jobs: int) -> None:
    """Write a consistent backup of the database and the ledger's trust material into DIRECTORY (new or empty)."""
    from services.backup import use_cases as backups
    from services.backup.manifest import BackupFailed, BackupRefused

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        backups.check_source(settings)
        target = backups.prepare_target(directory)
        with runtime.database(settings) as ready:
            report = _asyncio_run(backups.backup(ready, target, jobs))
    except (BackupRefused, BackupFailed) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup written to {report.directory}: {report.files} files, {report.size / 1e6:.1f} MB;"
               f" PostgreSQL {report.server_version}, {report.migrations} migrations;"
               f" ledger tree size {report.tree_size}, {report.ledger_files} identity files"
               " (offline CA keys not included)")


@main.command("restore")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True,
              help="Replace a database that is not empty (every schema it holds is dropped, in the restore's"
                   " own transaction) and the ledger's trust material under OMNISTOCK_DATA_DIR.")
def restore_command(directory: Path, force: bool) -> None:
    """Restore a backup made by `omnistock backup` (checksums verified first); refuses a non-empty target."""
    from services.backup import use_cases as backups
    from services.backup.manifest import BackupFailed, BackupRefused

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        plan = backups.plan_restore(settings, directory, force)
        with runtime.database(settings) as ready:
            report = _asyncio_run(backups.restore(ready, plan))
    except BackupRefused as exc:
        raise click.ClickException(f"{exc}\nnothing was restored") from None
    except BackupFailed as exc:
        raise click.ClickException(str(exc)) from None
    made = plan.manifest
    click.echo(f"restored the backup of {made.created_at} (omnistock {made.omnistock_version}) into database"
               f" {report.database}" + (f", replacing schemas {', '.join(report.replaced)}" if report.replaced else "")
               + f"; ledger tree size {report.tree_size}, {report.ledger_files} identity files;"
               f" {len(report.applied)} newer migrations applied; service logins and grants re-applied")


main.add_command(ecommerce_commands)

main.add_command(import_group)
main.add_command(reconcile)
main.add_command(ledger_commands)

if __name__ == "__main__":
    sys.exit(main())
