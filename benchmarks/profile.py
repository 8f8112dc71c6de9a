"""Optional: sample the services with py-spy during each measured load (`--profile`).

Writes collapsed stacks (flamegraph input) per load and service under results/profiles/, and
summarises the functions where the service spent its samples, so a slow scenario names its culprit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")


def available() -> bool:
    return PY_SPY.exists() or shutil.which("py-spy") is not None


@dataclass
class Profiler:
    out_dir: Path
    running: list[tuple[str, Path, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, label: str, pids: dict[str, int], seconds: float) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for service, pid in pids.items():
            path = self.out_dir / f"{_slug(label)}.{service}.txt"
            command = [str(PY_SPY if PY_SPY.exists() else "py-spy"), "record", "--pid", str(pid), "--format", "raw",
                       "--rate", "200", "--duration", str(max(1, round(seconds))), "--output", str(path),
                       "--nonblocking", "--gil"]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running.append((service, path, process))

    def finish(self) -> dict[str, dict[str, list[tuple[str, float]]]]:
        """Wait for the samplers; return each service's top functions by share of samples."""
        summary = {}
        for service, path, process in self.running:
            process.wait(timeout=60)
            summary[service] = top_functions(path)
        self.running.clear()
        return summary


def top_functions(path: Path, count: int = 10) -> dict[str, list[tuple[str, float]]]:
    """Where the samples went: leaf functions (self) and callers below the entry points (inclusive)."""
    if not path.exists():
        return {}
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n, frames = int(samples), stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {}
    # Frames present in nearly every sample are the entry points (main, run, the loop): no news there.
    callers = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * total][:count]
    return {"self": [(f, round(n / total, 3)) for f, n in own.most_common(count)],
            "inclusive": [(f, round(n / total, 3)) for f, n in callers],
            "samples": [("total", float(total))]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")
