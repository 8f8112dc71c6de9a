"""pg_dump, pg_restore and psql as subprocesses, with the password in the environment, never in argv
(where `ps` shows it to every user)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from services.backup.manifest import BackupFailed, BackupRefused

RESTORE_GUC = "omnistock.restore"
# Runs after the script in the same transaction: pg_restore's output reached its end (the trailer
# below is written only once pg_restore exited 0), or everything rolls back. Without it, a pg_restore
# that died half-way would leave psql at end of input, and psql commits at end of input.
_COMPLETE_CHECK = (f"DO $$ BEGIN IF current_setting('{RESTORE_GUC}') <> 'complete' THEN"
                   " RAISE EXCEPTION 'the restore script stopped early: nothing restored'; END IF; END $$")
# With --no-privileges every restored function is executable by PUBLIC, and SECURITY DEFINER ones run
# as their owner (the restoring superuser until the grants re-own them): shut them before COMMIT.
_SHUT_DEFINERS = """DO $$ DECLARE f regprocedure; BEGIN
FOR f IN SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
END LOOP; END $$"""


@dataclass(frozen=True)
class LibpqTarget:
    """A connection URL without its password, and the environment that carries the password."""

    conninfo: str
    env: dict[str, str]


def libpq_target(url: str, application_name: str) -> LibpqTarget:
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env["PGAPPNAME"] = application_name
    if password:
        env["PGPASSWORD"] = unquote(password)
    netloc = f"{user}{at}{hostport}" if user else hostport
    return LibpqTarget(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), env)


async def dump(pg_dump: Path, target: LibpqTarget, snapshot_id: str, out_dir: Path, jobs: int) -> None:
    """The database as of `snapshot_id` (kept alive by the caller's open transaction) into `out_dir`,
    directory format: one file per table, gzip level 6, `jobs` tables at a time."""
    proc = await asyncio.create_subprocess_exec(
        str(pg_dump), "--format=directory", f"--file={out_dir}", f"--jobs={jobs}", "--compress=6",
        f"--snapshot={snapshot_id}", "--no-password", f"--dbname={target.conninfo}",
        env=target.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackupFailed(f"pg_dump failed ({proc.returncode}): {_tail(err)}")
    _make_private(out_dir)


def _make_private(folder: Path) -> None:
    """pg_dump creates its files through the umask; the backup directory (0700) kept everyone else out
    meanwhile, and now the files themselves say so too."""
    for path in folder.iterdir():
        path.chmod(0o600)


async def restore(pg_restore: Path, psql: Path, target: LibpqTarget, dump_dir: Path, clearing: list[str]) -> None:
    """pg_restore's script piped into one psql transaction: `clearing` (what --force drops) first, then
    the dump, without owners or privileges (the grants are re-applied from shared/roles.py after).
    Either all of it commits or nothing does."""
    commands = ["-c", f"SET LOCAL {RESTORE_GUC} = 'incomplete'"]
    for statement in clearing:
        commands += ["-c", statement]
    commands += ["-f", "-", "-c", _COMPLETE_CHECK, "-c", _SHUT_DEFINERS]
    reader = await asyncio.create_subprocess_exec(
        str(pg_restore), "--no-owner", "--no-privileges", "--file=-", str(dump_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    writer = await asyncio.create_subprocess_exec(
        str(psql), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction",
        f"--dbname={target.conninfo}", *commands,
        env=target.env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None and writer.stdin is not None
    assert writer.stderr is not None
    reader_err = asyncio.create_task(reader.stderr.read())
    writer_err = asyncio.create_task(writer.stderr.read())
    killed = False
    try:
        while chunk := await reader.stdout.read(1 << 16):
            writer.stdin.write(chunk)
            await writer.stdin.drain()
        if await reader.wait() == 0:
            writer.stdin.write(f"\nSET LOCAL {RESTORE_GUC} = 'complete';\n".encode())
            await writer.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # psql stopped at an error; its stderr says which
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            writer.stdin.close()
        if reader.returncode is None:
            reader.kill()  # psql is gone: nobody reads the rest
            killed = True
        await reader.wait()
        await writer.wait()
    if reader.returncode != 0 and not killed:
        raise BackupFailed(f"pg_restore failed ({reader.returncode}), nothing restored: {_tail(await reader_err)}")
    if writer.returncode != 0:
        raise BackupFailed(f"psql refused the restore ({writer.returncode}), nothing restored: "
                           f"{_tail(await writer_err)}")


def check_versions(server_major: int, dump_major: int, what: str) -> None:
    """pg_dump must be at least the server's major version (it refuses otherwise); say what to do."""
    if dump_major < server_major:
        raise BackupRefused(
            f"{what} is PostgreSQL {dump_major}, the server is {server_major}: it cannot dump a newer server."
            " Point OMNISTOCK_PG_BIN_DIR at the bin/ directory of a PostgreSQL at least as new as the server")


def _tail(stderr: bytes, lines: int = 12) -> str:
    return "\n".join(stderr.decode(errors="replace").strip().splitlines()[-lines:])
