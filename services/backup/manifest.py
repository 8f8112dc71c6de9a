"""The backup's manifest: what it holds and the SHA-256 of every file, and the checks made on it
before a restore touches anything.

The checksums catch a file that was cut short, bit-rotted, edited, added or removed since the backup
was written. They do not stop someone who may write the backup directory and rewrites the manifest
too: keep backups where only operators can write (the directory is 0700).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "omnistock-backup/1"
MANIFEST = "manifest.json"
DB_DIR = "db"
LEDGER_DIR = "ledger"
TOP_LEVEL = (DB_DIR, LEDGER_DIR)
_CHUNK = 1 << 20


class BackupRefused(Exception):
    """A backup or restore that would be wrong, refused before it changed anything; the message says why."""


class BackupFailed(Exception):
    """pg_dump, pg_restore or psql failed; the message carries the end of what it said."""


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int
    mode: str  # octal text, e.g. "0600"


@dataclass(frozen=True)
class Migration:
    schema: str
    version: str
    checksum: str


@dataclass
class Manifest:
    omnistock_version: str
    created_at: str  # RFC 3339 UTC
    database: dict[str, Any]  # name, server_version, server_major, pg_dump_major
    migrations: list[Migration]
    ledger: dict[str, Any]  # entries, tree_size, excluded
    files: dict[str, FileRecord] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise BackupRefused(f"not an omnistock backup of a format this version reads ({FORMAT}):"
                                    f" format is {doc.get('format')!r}")
            return cls(
                omnistock_version=str(doc["omnistock_version"]), created_at=str(doc["created_at"]),
                database=dict(doc["database"]), ledger=dict(doc["ledger"]),
                migrations=[Migration(str(m["schema"]), str(m["version"]), str(m["checksum"]))
                            for m in doc["migrations"]],
                files={str(path): FileRecord(str(r["sha256"]), int(r["size"]), str(r["mode"]))
                       for path, r in doc["files"].items()},
            )
        except BackupRefused:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupRefused(f"{MANIFEST} is not a readable manifest: {exc!r}") from None


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def record_files(root: Path) -> dict[str, FileRecord]:
    """Every file under `root` except the manifest, by its path relative to `root` (POSIX)."""
    records = {}
    for path in sorted(_walk(root)):
        sha, size = sha256_file(root / path)
        records[path] = FileRecord(sha, size, f"{stat.S_IMODE((root / path).stat().st_mode):04o}")
    return records


def _walk(root: Path) -> Iterable[str]:
    """Relative paths of the regular files under `root`; a symlink or anything else is refused (a
    link would make a restore read, or write, outside the backup)."""
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise BackupRefused(f"{path} is not a regular file or directory")
        for name in files:
            relative = (Path(folder) / name).relative_to(root).as_posix()
            if relative != MANIFEST:
                yield relative


def safe_relative(path: str) -> PurePosixPath:
    """A manifest path that stays inside the backup and under db/ or ledger/."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2 or pure.parts[0] not in TOP_LEVEL:
        raise BackupRefused(f"{MANIFEST} names a file outside db/ and ledger/: {path!r}")
    return pure


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Last step of a backup, atomically: a directory with a manifest is a finished backup."""
    tmp = root / f".{MANIFEST}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, manifest.to_json())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, root / MANIFEST)
    directory = os.open(root, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def load_manifest(root: Path) -> Manifest:
    if not root.is_dir():
        raise BackupRefused(f"{root} is not a directory")
    try:
        raw = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BackupRefused(f"{root} has no {MANIFEST}: not an omnistock backup, or one that never finished"
                            ) from None
    manifest = Manifest.from_json(raw)
    for path in manifest.files:
        safe_relative(path)
    return manifest


def file_problems(root: Path, manifest: Manifest) -> list[str]:
    """Each file missing, changed or not listed; empty when the backup is exactly what was written."""
    problems = []
    present = set(_walk(root))
    for path, record in sorted(manifest.files.items()):
        if path not in present:
            problems.append(f"{path}: missing")
            continue
        sha, size = sha256_file(root / path)
        if (sha, size) != (record.sha256, record.size):
            problems.append(f"{path}: checksum does not match the manifest (size {size}, manifest {record.size})")
    added = sorted(present - set(manifest.files))
    problems += [f"{path}: not in the manifest (added after the backup)" for path in added]
    if not any(PurePosixPath(p).parts[0] == DB_DIR for p in manifest.files):
        problems.append(f"{DB_DIR}/: the manifest lists no database dump")
    return problems


def migration_problems(recorded: Iterable[Migration], known: Mapping[tuple[str, str], str]) -> list[str]:
    """Migrations in the backup that this code does not have (the backup is newer than the code) or has
    with other content (another line of development). Fewer than the code's is fine: the restore
    applies the rest."""
    problems = []
    for m in recorded:
        checksum = known.get((m.schema, m.version))
        if checksum is None:
            problems.append(f"{m.schema}/{m.version}: applied in the backup, unknown to this omnistock (newer)")
        elif checksum != m.checksum:
            problems.append(f"{m.schema}/{m.version}: differs from this omnistock's file of that name")
    return problems


def code_migrations(sets: Iterable[Any]) -> dict[tuple[str, str], str]:
    """(schema, file name) -> SHA-256 of the file, as shared/migrations.py records it."""
    return {(s.schema, p.name): hashlib.sha256(p.read_text().encode()).hexdigest() for s in sets for p in s.files()}
