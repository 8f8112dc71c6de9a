"""The `omnistock` command: a thin shell over the same use cases the HTTP routes call."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import orjson
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ledger.cli import ledger as ledger_commands
from ledger.identity import init_identities
from services import registry, runtime
from services.console import users as console_users
from services.ecommerce.cli import ecommerce as ecommerce_commands
from services.finance.cli import import_group, reconcile
from shared import keys as keys_use_cases
from shared.auth import ROLES
from shared.db import Connection, create_pool
from shared.errors import Problem
from shared.logging import configure_logging
from shared.roles import service_dsn
from shared.settings import Settings
from shared.text import text_problem

T = TypeVar("T")
console = Console(stderr=True)
DEMO_STORES, DEMO_SKUS = 25, 500
DEMO_LABEL, DEMO_KEYS_FILE = "demo", "demo-keys.json"


def _run(coro_fn: Callable[[Settings], Awaitable[T]], *, force_grants: bool = False) -> T:
    """Resolve the database (embedded when DATABASE_URL is unset), migrate, and run `coro_fn`."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    with runtime.database(settings) as ready:

        async def main() -> T:
            await runtime.migrate(ready, force_grants=force_grants)
            return await coro_fn(ready)

        return _asyncio_run(main())


def load_settings() -> Settings:
    """The settings, or a clear error naming each refused variable (its value is never repeated)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid settings: {problems}") from None


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
@click.option("--demo", is_flag=True,
              help="Seed demo data and print one API key per role (to stderr; the same keys on the next start).")
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


async def _demo(settings: Settings) -> dict[str, str]:
    """Seed once, and hand out one key per role: the previous demo's keys again while they are still
    good (kept in a 0600 file under the data directory), new ones for the rest, and every other
    active demo key revoked. The keys go to the terminal (stderr), never to the log stream."""
    from services.inventory import repository as inventory_repo
    from services.inventory import use_cases as inventory

    pool = await create_pool(_owner_dsn(settings), min_size=1, max_size=2)
    try:
        if not await inventory_repo.list_locations(pool):
            await inventory.seed(pool, DEMO_STORES, DEMO_SKUS)
        first_store = (await inventory_repo.list_locations(pool))[0]["id"]
        path = settings.data_dir / DEMO_KEYS_FILE
        kept = _read_demo_keys(path)
        handed: dict[str, str] = {}
        ours: set[int] = set()
        async with pool.acquire() as conn:
            for role in ROLES:
                location = first_store if role == "store" else None
                record = await keys_use_cases.record_of(conn, kept[role]) if role in kept else None
                if record and record.status == "active" and (record.role, record.location_id) == (role, location):
                    handed[role] = kept[role]
                else:
                    handed[role], record = await keys_use_cases.issue_key(
                        conn, keys_use_cases.KeyRequest(role, location, DEMO_LABEL))
                ours.add(record.id)
            for stale in await keys_use_cases.active_labelled(conn, DEMO_LABEL):
                if stale.id not in ours:
                    await keys_use_cases.revoke_key(conn, stale.id)
        _write_demo_keys(path, handed)
        for role, key in handed.items():
            where = f" ({first_store})" if role == "store" else ""
            click.echo(f"{role + where:<24} {key}", err=True)
        async with pool.acquire() as conn:
            people = await _demo_users(conn, settings.data_dir / DEMO_USERS_FILE, first_store)
        click.echo(f"console users, sign in at {settings.base_url('console')}/sign-in:", err=True)
        for username, password in people.items():
            click.echo(f"  {username:<22} {password}", err=True)
        return handed
    finally:
        await pool.close()


DEMO_USERS_FILE = "demo-users.json"
DEMO_USER_ROLES = ("store", "ops", "finance", "auditor")


async def _demo_users(conn: Connection, path: Path, store: str) -> dict[str, str]:
    """One console user per role of a person (`demo-<role>`), with the previous demo's passwords when
    that file is still there, else new ones (kept like the demo keys: 0600, to the terminal only)."""
    kept = _read_demo_keys(path)
    existing = {user.username: user for user in await console_users.list_users(conn)}
    handed: dict[str, str] = {}
    for role in DEMO_USER_ROLES:
        username = f"demo-{role}"
        password = kept.get(username) or secrets.token_urlsafe(12)
        if username not in existing:
            await console_users.create_user(conn, username=username, display_name=f"Demo {role}", role=role,
                                            location_id=store if role == "store" else None, password=password)
        elif username not in kept:
            await console_users.set_password(conn, username, password)
        handed[username] = password
    _write_demo_keys(path, handed)
    return handed


def _read_demo_keys(path: Path) -> dict[str, str]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write_demo_keys(path: Path, handed: dict[str, str]) -> None:
    """Readable by this user alone, and whole or not at all (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = path.with_suffix(".tmp")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(handed, option=orjson.OPT_INDENT_2))
    os.chmod(scratch, 0o600)  # an older file of that name kept its mode through O_TRUNC
    os.replace(scratch, path)


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


def _with_owner_pool(work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `work` on one connection as the database owner; a refused request exits with its reason."""

    async def go(settings: Settings) -> T:
        pool = await create_pool(_owner_dsn(settings), min_size=1, max_size=1)
        try:
            async with pool.acquire() as conn:
                return await work(conn)
        except Problem as problem:
            details = "; ".join(f"{e['field']}: {e['problem']}" for e in problem.extra.get("errors", []))
            raise click.ClickException(details or problem.detail) from None
        finally:
            await pool.close()

    return _run(go)


def _expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return keys_use_cases.parse_expiry(value, datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--location", "location_id", default=None, help="The location a store key is bound to.")
@click.option("--label", default=None, help="What the key is for (e.g. 'till 3, Soho').")
@click.option("--expires", default=None,
              help="A duration (30d, 12h, 1d12h, 90m) or an ISO 8601 time (UTC if it names no offset).")
def keys_create(role: str, location_id: str | None, label: str | None, expires: str | None) -> None:
    """Create an API key; the key is the last word printed."""
    if (role == "store") != (location_id is not None):
        raise click.UsageError("--location is required for --role store, and only for it")
    if label is not None and (problem := text_problem(label)):
        raise click.BadParameter(problem, param_hint="--label")
    request = keys_use_cases.KeyRequest(role, location_id, label, _expiry(expires))

    async def issue(conn: Connection) -> tuple[str, keys_use_cases.KeyRecord]:
        return await keys_use_cases.issue_key(conn, request)

    key, record = _with_owner_pool(issue)
    until = f", expires {record.expires_at.isoformat()}" if record.expires_at else ""
    click.echo(f"key id {record.id}{until}", err=True)
    click.echo(f"created {role} key{f' for {location_id}' if location_id else ''}: {key}")


@keys.command("list")
@click.option("--role", default=None, type=click.Choice(ROLES))
@click.option("--status", default=None, type=click.Choice(keys_use_cases.STATUSES))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def keys_list(role: str | None, status: str | None, as_json: bool) -> None:
    """Every API key, newest first, without its secret."""

    async def collect(conn: Connection) -> list[keys_use_cases.KeyRecord]:
        found, cursor = [], None
        while True:
            page = await keys_use_cases.list_keys(conn, role=role, status=status, cursor=cursor, limit=500)
            found += page.items
            if (cursor := page.next_cursor) is None:
                return found

    records = _with_owner_pool(collect)
    if as_json:
        for record in records:
            click.echo(orjson.dumps(dataclasses.asdict(record)).decode())
        return
    table = Table("id", "role", "location", "label", "person", "status", "created", "expires", "last used")
    for r in records:
        table.add_row(str(r.id), r.role, r.location_id or "", r.label or "", r.person or "", r.status,
                      _when(r.created_at),
                      _when(r.expires_at), _when(r.last_used_at))
    # Piped (a script, a pager): wide enough for whole labels rather than rich's 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else ""


@keys.command("revoke")
@click.argument("key_id", type=click.IntRange(1, 2**63 - 1))
def keys_revoke(key_id: int) -> None:
    """Revoke a key: every service refuses it within a second."""

    async def revoke(conn: Connection) -> keys_use_cases.KeyRecord:
        return await keys_use_cases.revoke_key(conn, key_id)

    record = _with_owner_pool(revoke)
    click.echo(f"revoked key {record.id} ({record.role}{f', {record.label}' if record.label else ''})"
               f" at {record.revoked_at.isoformat() if record.revoked_at else ''}")


@main.group()
def users() -> None:
    """People who sign in to the console (each works through a short-lived key of their own)."""


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True, err=True))


@users.command("create")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(console_users.USER_ROLES))
@click.option("--location", "location_id", default=None, help="The store a store associate works at.")
@click.option("--name", "display_name", default=None, help="The name pages show (default: the user name).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def users_create(username: str, role: str, location_id: str | None, display_name: str | None,
                 password_stdin: bool) -> None:
    """Create a console user; the password is asked for twice (or read from stdin)."""
    password = _password(password_stdin)

    async def create(conn: Connection) -> console_users.User:
        return await console_users.create_user(conn, username=username, display_name=display_name or username,
                                               role=role, location_id=location_id, password=password)

    user = _with_owner_pool(create)
    click.echo(f"created {user.role} user {user.username}{f' at {user.location_id}' if user.location_id else ''}")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def users_list(as_json: bool) -> None:
    """Every console user, without password hashes."""
    found = _with_owner_pool(console_users.list_users)
    if as_json:
        for user in found:
            click.echo(orjson.dumps(dataclasses.asdict(user)).decode())
        return
    table = Table("user", "name", "role", "location", "created", "disabled")
    for u in found:
        table.add_row(u.username, u.display_name, u.role, u.location_id or "", _when(u.created_at),
                      _when(u.disabled_at))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable a user: their sessions end and their keys are revoked at once."""

    async def disable(conn: Connection) -> console_users.User:
        return await console_users.disable_user(conn, username)

    user = _with_owner_pool(disable)
    click.echo(f"disabled {user.username}; open sessions ended, keys revoked")


@users.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Let a disabled user sign in again."""

    async def enable(conn: Connection) -> console_users.User:
        return await console_users.enable_user(conn, username)

    click.echo(f"enabled {_with_owner_pool(enable).username}")


@users.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def users_set_password(username: str, password_stdin: bool) -> None:
    """Give a user a new password (their open sessions go on until they sign out or expire)."""
    password = _password(password_stdin)

    async def change(conn: Connection) -> console_users.User:
        return await console_users.set_password(conn, username, password)

    click.echo(f"new password set for {_with_owner_pool(change).username}")


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
