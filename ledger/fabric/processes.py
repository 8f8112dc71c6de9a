"""The network's long-running processes: started detached with a pid file and a log, found again by
pid file from any later command, stopped by pid (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ledger.fabric.layout import Layout


def start(layout: Layout, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> int:
    """Start `argv` in its own session (so it outlives the command that started it, and `stop` can end
    it with everything it spawned), output appended to logs/<name>.log; return its pid."""
    layout.run.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    if (pid := running_pid(layout, name)) is not None:
        raise RuntimeError(f"{name} is already running (pid {pid})")
    with layout.log_file(name).open("ab") as log:
        process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    layout.pid_file(name).write_text(f"{process.pid}\n{_start_time(process.pid)}\n{argv[0]}\n")
    return process.pid


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if this process started it, so a stopped child is not left a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may itself hold spaces or parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str:
    """When `pid` started, in clock ticks since boot: with the pid, it names one process for good."""
    fields = _stat(pid)
    return fields[19] if fields else ""


def pid_alive(pid: int) -> bool:
    """True while any thread of `pid` runs. A killed Go program's main thread can be a zombie while its
    other threads still hold its sockets, so a zombie leader alone does not make the process gone."""
    _reap(pid)
    fields = _stat(pid)
    if fields is None:
        return False
    if fields[0] not in ("Z", "X"):
        return True
    try:
        tasks = [task.name for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    for task in tasks:
        try:
            state = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def running_pid(layout: Layout, name: str) -> int | None:
    """The pid of process `name` if it is running (as recorded by its pid file), else None. A pid the
    kernel has since given to another process (after a reboot, say) does not count: its start time differs."""
    try:
        pid_text, started, *_ = layout.pid_file(name).read_text().splitlines()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and started and _start_time(pid) == started else None


def stop(layout: Layout, name: str, *, grace_s: float = 10.0) -> bool:
    """End process `name` and its session: SIGTERM, then SIGKILL after `grace_s`. True if it was running."""
    pid = running_pid(layout, name)
    if pid is not None:
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.05)
    layout.pid_file(name).unlink(missing_ok=True)
    return pid is not None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # start() made each process the leader of its own session and group, so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def log_tail(layout: Layout, name: str, lines: int = 20) -> str:
    try:
        return "\n".join(layout.log_file(name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
