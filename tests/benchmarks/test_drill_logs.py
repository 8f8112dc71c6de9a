"""A failed drill names the tracebacks behind its 500s, read from the services' JSON logs."""

from __future__ import annotations

from pathlib import Path

import orjson

from benchmarks.drills.checks import unhandled_errors


def test_unhandled_errors_are_collected_per_service(tmp_path: Path) -> None:
    lines = [
        {"event": "request", "status": 201, "level": "info"},
        {"event": "unhandled error", "level": "error", "path": "/v1/ledger/entries", "method": "POST",
         "exception": "Traceback ...\nValueError: first"},
        b"not json at all",
        {"event": "unhandled error", "level": "error", "exception": "Traceback ...\nKeyError: second"},
    ]
    (tmp_path / "ledger.log").write_bytes(b"\n".join(
        line if isinstance(line, bytes) else orjson.dumps(line) for line in lines))
    (tmp_path / "orders.log").write_bytes(orjson.dumps({"event": "request", "status": 503}))

    found = unhandled_errors(tmp_path)
    assert list(found) == ["ledger"]
    assert found["ledger"][0].startswith("POST /v1/ledger/entries: ") and found["ledger"][0].endswith("first")
    assert found["ledger"][1].endswith("KeyError: second")
