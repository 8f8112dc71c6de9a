"""Chaincode-as-a-service packages, byte for byte reproducible, so a package's id (label:sha256 of
its bytes, as the peer computes it) is known before any peer has seen it: the chaincode process is
started with CHAINCODE_ID, and compose can name it in advance."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

from ledger.fabric.names import CHAINCODE_LABEL, PACKAGE_TYPE
from ledger.fabric.netconfig import connection_json


def _tar_gz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    # mtime=0 in the gzip header too: the same files always make the same bytes.
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


def ccaas_package(address: str, label: str = CHAINCODE_LABEL) -> bytes:
    """The package `peer lifecycle chaincode install` takes: metadata.json (type ccaas) and a code
    archive holding connection.json, the chaincode server's address."""
    code = _tar_gz({"connection.json": _json(connection_json(address))})
    return _tar_gz({"metadata.json": _json({"type": PACKAGE_TYPE, "label": label}), "code.tar.gz": code})


def package_id(package: bytes, label: str = CHAINCODE_LABEL) -> str:
    return f"{label}:{hashlib.sha256(package).hexdigest()}"
