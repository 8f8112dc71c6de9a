"""--profile samples without pausing the services; --native trades that for C frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import profile


@pytest.mark.parametrize(("native", "wanted", "unwanted"), [
    (False, ["--nonblocking", "--gil"], ["--native"]),
    (True, ["--native"], ["--nonblocking", "--gil"]),
])
def test_the_sampler_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool,
                             wanted: list[str], unwanted: list[str]) -> None:
    commands: list[list[str]] = []

    class Recorded:
        def __init__(self, command: list[str], **_: Any) -> None:
            commands.append(command)

    monkeypatch.setattr(profile.subprocess, "Popen", Recorded)
    profile.Profiler(tmp_path, native=native).start("a load", {"ecommerce": 4242}, 15.0)
    [command] = commands
    assert command[1:4] == ["record", "--pid", "4242"]
    assert all(flag in command for flag in wanted) and not any(flag in command for flag in unwanted)
