"""Services as real `omnistock serve NAME` processes on fixed ports, so a drill can kill -9 one and
start it again where clients already point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from benchmarks.stack import LOAD_KEY_LIMITS
from shared.embedded_db import free_port

SERVE = [sys.executable, "-m", "services.cli", "serve"]


def service_env(database_url: str, data_dir: Path, admin_key: str, **extra: str) -> dict[str, str]:
    """The environment of an omnistock process: only the drill's settings, none inherited from the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNISTOCK_") and k != "DATABASE_URL"}
    env.update({
        "DATABASE_URL": database_url,
        "OMNISTOCK_DATA_DIR": str(data_dir),
        "OMNISTOCK_BOOTSTRAP_ADMIN_KEY": admin_key,
        "OMNISTOCK_LOG_LEVEL": "warning",
        "OMNISTOCK_KEY_LIMITS": LOAD_KEY_LIMITS,  # the drill's writers are one key each, at full speed
    })
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    serves: str = ""  # the omnistock service it runs (`name` unless a replica, e.g. "orders-2")

    def __post_init__(self) -> None:
        self.serves = self.serves or self.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None


@dataclass
class Services:
    """Named service processes sharing one environment; each keeps its port across restarts."""

    env: dict[str, str]
    root: Path
    services: dict[str, Service] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def add(self, name: str, serves: str = "") -> Service:
        service = Service(name, free_port(), self.root / f"{name}.log", serves=serves)
        self.services[name] = service
        return service

    def spawn(self, name: str) -> None:
        service = self.services[name]
        env = dict(self.env, **{f"OMNISTOCK_{service.serves.upper()}_PORT": str(service.port)})
        with service.log.open("ab") as out:
            service.process = subprocess.Popen([*SERVE, service.serves], env=env, stdout=out, stderr=out)
        service.starts += 1

    async def start(self, names: list[str], timeout_s: float = 60) -> None:
        for name in names:
            if name not in self.services:
                self.add(name)
            self.spawn(name)
        await asyncio.gather(*(self.wait_ready(name, timeout_s) for name in names))

    async def wait_ready(self, name: str, timeout_s: float = 60) -> float:
        """Seconds until /readyz answers 200; raises if the process exits or the deadline passes."""
        service = self.services[name]
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() - started < timeout_s:
                if service.process is None or service.process.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{tail(service.log)}")
                try:
                    async with session.get(f"{service.url}/readyz") as response:
                        if response.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{name} not ready after {timeout_s}s:\n{tail(service.log)}")

    def kill9(self, names: list[str]) -> None:
        """SIGKILL: no cleanup, no graceful close of connections or in-flight transactions."""
        for name in names:
            process = self.services[name].process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for name in names:
            process = self.services[name].process
            if process is not None:
                process.wait(timeout=30)

    def stop_all(self) -> None:
        running = [s.process for s in self.services.values() if s.process is not None and s.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
