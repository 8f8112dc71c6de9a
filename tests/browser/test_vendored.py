"""The vendored front-end files are exactly the ones recorded, byte for byte, and an installed package
carries them. No browser needed."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CONSOLE = ROOT / "services" / "console"
VENDOR_DIRS = [CONSOLE / "static" / "vendor", Path(__file__).parent / "vendor"]
MANIFEST = "VENDORED.json"
FIELDS = {"package", "version", "npm_pack", "tarball", "tarball_integrity", "path_in_package", "license", "sha256"}
STATIC_REF = re.compile(r"""["'](/static/[^"'?#]+)""")


def manifest(folder: Path) -> dict[str, dict[str, str]]:
    return json.loads((folder / MANIFEST).read_text())["files"]


@pytest.mark.parametrize("folder", VENDOR_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_vendored_file_has_its_recorded_sha256(folder: Path) -> None:
    recorded = manifest(folder)
    assert recorded, "nothing recorded"
    wrong = {name: entry["sha256"] for name, entry in recorded.items()
             if not (folder / name).is_file()
             or hashlib.sha256((folder / name).read_bytes()).hexdigest() != entry["sha256"]}
    assert not wrong, f"missing or changed since vendored: {sorted(wrong)}"


@pytest.mark.parametrize("folder", VENDOR_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_in_a_vendor_folder_goes_unrecorded(folder: Path) -> None:
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    assert present - set(manifest(folder)) == set(), "vendored files not in VENDORED.json"


@pytest.mark.parametrize("folder", VENDOR_DIRS, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_record_says_where_the_file_came_from(folder: Path) -> None:
    for name, entry in manifest(folder).items():
        assert set(entry) >= FIELDS, (name, FIELDS - set(entry))
        assert entry["npm_pack"] == f"{entry['package']}@{entry['version']}", name
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), name
        assert entry["tarball_integrity"].startswith("sha512-"), name
        assert Path(entry["path_in_package"]).name == Path(name).name, name


def test_every_static_file_a_template_loads_exists() -> None:
    refs = {ref for template in (CONSOLE / "templates").rglob("*.html")
            for ref in STATIC_REF.findall(template.read_text())}
    assert any(ref.startswith("/static/vendor/") for ref in refs), "templates load no vendored file?"
    missing = sorted(ref for ref in refs if not (CONSOLE / ref.removeprefix("/")).is_file())
    assert not missing, f"templates load files that are not there: {missing}"


def test_the_package_data_carries_every_static_file_and_template() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    packaged = {p for pattern in globs["services.console"] for p in CONSOLE.glob(pattern) if p.is_file()}
    on_disk = {p for folder in ("static", "templates") for p in (CONSOLE / folder).rglob("*") if p.is_file()}
    assert on_disk - packaged == set()
