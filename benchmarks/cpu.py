"""Who used the two cores: CPU seconds per role (postgres, each service) over a measured window.

PostgreSQL is the postmaster and its backends; a backend that exits inside the window takes its CPU
time with it, which is why load generators keep their connections (and services their pools) open.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# (monotonic time, {pid: (role, cpu seconds)}, busy cpu seconds of the whole machine)
Snapshot = tuple[float, dict[int, tuple[str, float]], float]


@dataclass
class CpuMeter:
    """`roles` maps a role name to a function returning the root pids of that role right now."""

    roles: dict[str, Callable[[], list[int]]]

    def snapshot(self) -> Snapshot:
        seen: dict[int, tuple[str, float]] = {}
        for role, pids in self.roles.items():
            for pid in pids():
                for process in _tree(pid):
                    try:
                        times = process.cpu_times()
                    except psutil.Error:
                        continue
                    seen[process.pid] = (role, times.user + times.system)
        return time.monotonic(), seen, _machine_busy_s()

    def cores_since(self, before: Snapshot) -> dict[str, float]:
        """Average cores used per role between `before` and now (1.0 = one core fully busy)."""
        started, old, busy_before = before
        now, new, busy_now = self.snapshot()
        wall = max(now - started, 1e-9)
        used: dict[str, float] = dict.fromkeys(self.roles, 0.0)
        for pid, (role, cpu_s) in new.items():
            used[role] += cpu_s - old.get(pid, (role, 0.0))[1]
        cores = {role: round(seconds / wall, 2) for role, seconds in used.items()}
        # Everything else on the machine (the load generator reports its own share separately, and is
        # subtracted by the caller): other people's tests share these cores, and the figures should say so.
        cores["machine busy"] = round((busy_now - busy_before) / wall, 2)
        return cores


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    # guest time is already inside user; steal is the hypervisor's, not ours.
    busy = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, name, 0.0) for name in busy))


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def machine() -> dict[str, object]:
    """The machine the figures were measured on."""
    import platform

    return {
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
