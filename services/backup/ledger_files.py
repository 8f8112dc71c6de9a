"""The ledger's identities and trust material on disk: <data_dir>/ledger/ into a backup and back.

Files keep their mode; a private key (`*.key`) is never more open than 0600, and every file is
created with its final mode from the first byte (os.open), never chmod-ed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from ledger.identity import OFFLINE_CA
from services.backup.manifest import LEDGER_DIR, BackupRefused, FileRecord

# The organisations' CA private keys live offline (ledger/identity.py OFFLINE_CA): a backup never
# carries them, and a restore leaves the folder in place.
OFFLINE_CA_DIR = OFFLINE_CA.name
_CHUNK = 1 << 20


def ledger_root(data_dir: Path) -> Path:
    return Path(data_dir) / LEDGER_DIR


def _kept_files(root: Path) -> Iterator[Path]:
    """Files under `root` that belong in a backup: not the offline CA folder, not a half-written
    temporary (ledger/identity.py writes `.<name>.<random>.tmp` and renames it)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != OFFLINE_CA_DIR)
        for name in sorted(files):
            if not (name.startswith(".") and name.endswith(".tmp")):
                yield Path(folder) / name


def in_use(data_dir: Path) -> list[str]:
    """The trust material already under data_dir (relative paths); a restore replaces it only with --force."""
    root = ledger_root(data_dir)
    return [p.relative_to(root).as_posix() for p in _kept_files(root)] if root.is_dir() else []


def _mode_for(name: str, mode: int) -> int:
    mode &= 0o777
    return mode & 0o600 if name.endswith(".key") else mode


def _copy(src: Path, dst: Path, mode: int) -> str:
    """Copy with `mode` from the first byte; returns the SHA-256 of what was written."""
    digest = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask masked O_CREAT's mode; fchmod on our own fd is not a window
        with src.open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def copy_into_backup(data_dir: Path, backup_root: Path) -> int:
    """<data_dir>/ledger/ (less the offline CA folder) into <backup>/ledger/; returns the files copied."""
    source = ledger_root(data_dir)
    count = 0
    if not source.is_dir():
        return 0
    for path in _kept_files(source):
        relative = path.relative_to(source)
        target = backup_root / LEDGER_DIR / relative
        for depth in range(len(relative.parts)):  # each folder 0700 (mkdir(parents=True) would leave parents 0755)
            (backup_root / LEDGER_DIR).joinpath(*relative.parts[:depth]).mkdir(mode=0o700, exist_ok=True)
        _copy(path, target, _mode_for(path.name, path.stat().st_mode))
        count += 1
    return count


def stage(backup_root: Path, files: Mapping[str, FileRecord], data_dir: Path) -> Path:
    """Copy the backup's ledger files into a new folder beside <data_dir>/ledger (same file system, so
    `install` is renames), checking each file's SHA-256 as it is copied. The caller removes the folder
    if it does not install it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    staged = data_dir / f".{LEDGER_DIR}-restore-{secrets.token_hex(4)}"
    staged.mkdir()
    try:
        for name, record in sorted(files.items()):
            relative = PurePosixPath(name)
            if relative.parts[0] != LEDGER_DIR:
                continue
            target = staged.joinpath(*relative.parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            if _copy(backup_root / name, target, _mode_for(relative.name, int(record.mode, 8))) != record.sha256:
                raise BackupRefused(f"{name} changed while it was being restored")
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def install(staged: Path, data_dir: Path) -> None:
    """Put the staged folder in place of <data_dir>/ledger; the offline CA folder, if any, moves over."""
    current = ledger_root(data_dir)
    if current.exists():
        retired = data_dir / f".{LEDGER_DIR}-replaced-{secrets.token_hex(4)}"
        current.rename(retired)
        offline = retired / OFFLINE_CA_DIR
        if offline.exists():
            offline.rename(staged / OFFLINE_CA_DIR)
        staged.rename(current)
        shutil.rmtree(retired)
    else:
        staged.rename(current)

