"""A fresh stack for one benchmark run: durable embedded PostgreSQL, then each service as its own process.

Services run as `omnistock serve NAME` subprocesses (what a container runs), never inside the
benchmark's own interpreter, so the client's CPU and the GIL never flatter or hurt the service.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime import embedded_service_env
from shared.embedded_db import EmbeddedPostgres, free_port
from shared.settings import DEFAULT_KEY_LIMITS

OMNISTOCK = Path(sys.executable).with_name("omnistock")
# One key per role drives each load, far past what a deployment allows one key (the flash sale's shop
# key ~2,000 orders/s, the proofs' auditor key ~800/s, the idle-SSE shop key 10,000 streams): the
# limits are raised beyond any load here, and still checked, so their cost is in the figures.
LOAD_KEY_LIMITS = json.dumps({role: {"per_s": 1_000_000, "burst": 1_000_000, "streams": 20_000}
                              for role in DEFAULT_KEY_LIMITS})


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    """Owns a temp dir, a PostgreSQL cluster in it and the service processes; `close()` removes all."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="omnistock-bench-")))
    admin_key: str = field(default_factory=lambda: "osk_bench_" + secrets.token_urlsafe(24))
    keep: bool = False
    pg: EmbeddedPostgres | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        assert self.pg is not None, "start_database() first"
        return self.pg.dsn

    def start_database(self, statement_stats: bool = False) -> str:
        """Durable on purpose: fsync and synchronous_commit on, the configuration users would run, plus
        commit timestamps. `statement_stats` loads pg_stat_statements (for --profile; it costs a little on
        every query)."""
        # Commit timestamps let the change-latency scenario measure staleness from each change's commit.
        extra = {"track_commit_timestamp": "on"}
        if statement_stats:
            extra["shared_preload_libraries"] = "pg_stat_statements"
        self.pg = EmbeddedPostgres(self.root / "pg", free_port(), durable=True, extra_settings=extra)
        return self.pg.start()

    def postmaster_pid(self) -> int:
        assert self.pg is not None
        return int((self.pg.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every omnistock process of this stack."""
        env = dict(os.environ)
        assert self.pg is not None
        env.update({
            **embedded_service_env(self.pg),  # each service logs in as its own role, as under `omnistock up`
            "DATABASE_URL": self.dsn,
            "OMNISTOCK_DATA_DIR": str(self.root / "data"),
            "OMNISTOCK_BOOTSTRAP_ADMIN_KEY": self.admin_key,
            "OMNISTOCK_LOG_LEVEL": "warning",
            # Every benchmark client is 127.0.0.1: the idle-SSE scenario holds 10,000 streams from it, far past
            # the per-address cap a deployment wants (256). Still a cap, so the guard's counting is measured.
            "OMNISTOCK_MAX_CONNECTIONS_PER_CLIENT": "20000",
            "OMNISTOCK_KEY_LIMITS": LOAD_KEY_LIMITS,
        })
        env.update(extra)
        return env

    def omnistock(self, *args: str, timeout_s: float = 3600) -> str:
        """Run one `omnistock` command against this stack and return its stdout (stderr goes to a log)."""
        with (self.root / "cli.log").open("ab") as log:
            done = subprocess.run([str(OMNISTOCK), *args], env=self.env(), stdout=subprocess.PIPE, stderr=log,
                                  timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"omnistock {' '.join(args)} failed ({done.returncode}); see {self.root / 'cli.log'}")
        return done.stdout.decode()

    def create_key(self, role: str) -> str:
        return self.omnistock("keys", "create", "--role", role).split()[-1]

    def start_services(self, names: list[str], timeout_s: float = 60) -> None:
        """Start every named service not already running, then wait until each answers /readyz."""
        if {"ledger", "finance"} & set(names):
            self.omnistock("ledger", "init")  # each organisation's keys exist before its service reads them
        for name in names:
            if name in self.services:
                continue
            port = free_port()
            log = self.root / f"{name}.log"
            env = self.env(**{f"OMNISTOCK_{name.upper()}_PORT": str(port)})
            if name == "console":  # it calls the services already started, on their free ports
                env.update({f"OMNISTOCK_{other.upper()}_URL": s.url for other, s in self.services.items()})
            with log.open("ab") as out:
                process = subprocess.Popen([str(OMNISTOCK), "serve", name], env=env, stdout=out, stderr=out)
            self.services[name] = ServiceProcess(name, port, process, log)
        for service in self.services.values():
            self._wait_ready(service, timeout_s)

    def _wait_ready(self, service: ServiceProcess, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{_tail(service.log)}")
            try:
                with urllib.request.urlopen(f"{service.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{service.name} not ready after {timeout_s}s:\n{_tail(service.log)}")

    def close(self) -> None:
        for service in self.services.values():
            if service.process.poll() is None:
                service.process.terminate()
        for service in self.services.values():
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.process.kill()
        self.services.clear()
        if self.pg is not None:
            # Immediate: a clean shutdown would first checkpoint gigabytes of seed data we throw away.
            self.pg.stop(mode="immediate")
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
