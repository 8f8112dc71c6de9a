"""No service process reads another organisation's private key: `omnistock serve ledger`, `omnistock
serve finance` and finance's `omnistock ledger sign` run as real processes, each with a Python audit
hook (a sitecustomize on PYTHONPATH) that records every open of a *.key file. Through an append,
a checkpoint and finance's co-signature, each opens its own organisation's member key and nothing
else: no other member key and no CA key."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.drills.processes import Services, service_env
from ledger import identity
from tests.conftest import ADMIN_KEY
from tests.ledger.conftest import sale
from tests.test_cli import run_cli

# Writes "<path>" per line to $OMNISTOCK_TEST_KEY_OPENS for every open() of a file ending in .key.
SITECUSTOMIZE = '''
import os, sys
_log = os.environ.get("OMNISTOCK_TEST_KEY_OPENS")
if _log:
    def _record(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.endswith(".key"):
                with open(_log, "a", encoding="utf-8") as out:
                    out.write(os.path.realpath(path) + "\\n")
    sys.addaudithook(_record)
'''


def opened(log: Path) -> set[str]:
    return set(log.read_text().split()) if log.exists() else set()


def env_for(base: dict[str, str], hooks: Path, log: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(hooks), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, "OMNISTOCK_TEST_KEY_OPENS": str(log), **extra}


async def wait_for_cosigned(url: str, key: str, size: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        while True:
            async with session.get(f"{url}/v1/ledger/checkpoint") as response:
                body = await response.json()
            if response.status == 200 and body["tree_size"] == size and not body["missing_signers"]:
                return dict(body)
            assert time.monotonic() < deadline, f"no co-signed checkpoint of size {size}: {body}"
            await asyncio.sleep(0.1)


async def test_each_process_opens_only_its_own_organisations_key(
        database_url: str, service_urls: dict[str, str], make_key: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    identity.init_identities(data)  # `omnistock ledger init`, run by the operator beforehand
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    roles = {f"OMNISTOCK_{name.upper()}_DATABASE_URL": url for name, url in service_urls.items()}
    base = service_env(database_url, data, ADMIN_KEY, **roles)
    logs = {name: tmp_path / f"{name}-opens.txt" for name in ("ledger", "finance", "sign")}
    ledger = Services(env_for(base, hooks, logs["ledger"], OMNISTOCK_LEDGER_CHECKPOINT_INTERVAL_S="0.2"),
                      tmp_path)
    finance = Services(env_for(base, hooks, logs["finance"], OMNISTOCK_FINANCE_COSIGN_INTERVAL_S="0.2"), tmp_path)
    try:
        await ledger.start(["ledger"])
        await finance.start(["finance"])
        entries = tmp_path / "entries.json"
        entries.write_text(json.dumps([sale(1), sale(2)]))
        signed = run_cli("ledger", "sign", str(entries), env=env_for(base, hooks, logs["sign"]))
        assert signed.returncode == 0, signed.stderr
        key = await make_key("finance")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, \
                session.post(f"{ledger['ledger'].url}/v1/ledger/entries", data=signed.stdout,
                             headers={"Content-Type": "application/json", "Idempotency-Key": "k"}) as response:
            assert response.status == 201, await response.text()
        checkpoint = await wait_for_cosigned(ledger["ledger"].url, key, 2)
        assert [s["org"] for s in checkpoint["signatures"]] == ["ledger", "finance"]
    finally:
        ledger.stop_all()
        finance.stop_all()
    own = {org: str((identity.key_dir(data, org) / "member.key").resolve()) for org in ("ledger", "finance")}
    assert opened(logs["ledger"]) == {own["ledger"]}
    assert opened(logs["finance"]) == {own["finance"]}
    assert opened(logs["sign"]) == {own["finance"]}
