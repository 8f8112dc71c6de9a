"""The backup drill: real data through the services, `omnistock backup`, `omnistock restore` into a fresh
data directory (a new embedded PostgreSQL of its own), and everything compared.

Source: the test's database (DATABASE_URL, as with an external server) and its data directory with the
ledger's identities. Target: a data directory that does not exist yet, so the restore starts a new
cluster, with new passwords, and must recreate the service roles' logins and grants by itself.
"""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from ledger import identity
from services import registry
from services.runtime import embedded_service_urls
from shared.embedded_db import SECRETS_FILE, EmbeddedPostgres, free_port
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, Api, ServiceFactory, ServiceTestServer
from tests.drills.backup_facts import database_facts, table_digests
from tests.polling import eventually
from tests.services.finance.conftest import LONDON, SKUS, Books, payment
from tests.test_cli import cli_env, run_cli


@pytest.fixture
def fresh() -> Iterator[Path]:
    """A place for the restored data directory, not under pytest's basetemp: another pytest session may
    make that 0700 again (or prune it) while the new cluster's system user still needs to reach it."""
    root = Path(tempfile.mkdtemp(prefix="omnistock-restore-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


async def _trade(books: Books, service: ServiceFactory, make_key: Any) -> dict[str, Any]:
    """Orders in every state, a till sale, a reconciled and committed finance run: returns the export."""
    sold = [await books.sell_online({"TEE": 1}), await books.sell_online({"CAP": 2, "SOCKS": 3}),
            await books.sell_online({"JEANS": 1})]
    open_order = await _place(books, {"TEE": 2})
    cancelled = await _place(books, {"CAP": 1})
    status, body, _ = await books.orders.post(f"/v1/orders/{cancelled['id']}/cancel")
    assert status == 200, body
    await books.till("store-a", {"TEE": 1}, [("card", SKUS["TEE"])])
    await books.settle(*(payment(order["id"], order["total"]) for order in sold))
    run = await books.run(await books.day_of("wh-1"), channel="online")
    assert run["status"] == "reconciled", run
    status, body, _ = await books.finance.post(f"/v1/reconciliations/{run['id']}/commit")
    assert status == 200 and body["written"] == 4, body
    assert open_order["status"] == "placed"
    auditor = (await service("ledger", ledger_checkpoint_interval_s=0.1)).as_key(await make_key("auditor"))
    await service("finance", finance_cosign_interval_s=0.1)  # co-signs the checkpoint, as finance does

    async def cosigned() -> dict[str, Any] | None:
        status, checkpoint, _ = await auditor.get("/v1/ledger/checkpoint")
        done = status == 200 and checkpoint["tree_size"] == 4 and not checkpoint["missing_signers"]
        return checkpoint if done else None

    await eventually(cosigned)
    status, bundle, _ = await auditor.get("/v1/ledger/export", params={"from": 0, "to": 3})
    assert status == 200, bundle
    return bundle  # type: ignore[no-any-return]


async def _place(books: Books, lines: dict[str, int]) -> dict[str, Any]:
    body = {"channel": "online", "currency": "EUR",
            "lines": [{"sku": sku, "qty": qty, "unit_price": SKUS[sku]} for sku, qty in lines.items()],
            "fulfillment": {"type": "ship", "location_id": "wh-1", "ship_to": LONDON}}
    status, order, _ = await books.orders.post("/v1/orders", json=body, idem=f"drill-{sorted(lines)}")
    assert status == 201, order
    return order  # type: ignore[no-any-return]


async def test_a_backup_restored_into_a_fresh_data_directory_is_the_same_business(
        books: Books, service: ServiceFactory, make_key: Any, settings: Settings, database_url: str,
        database_env: dict[str, str], tmp_path: Path, fresh: Path) -> None:
    bundle = await _trade(books, service, make_key)
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    offline = identity.offline_ca_dir(settings.data_dir)  # CA keys kept offline (item 2): never in a backup
    identity.rotate_member(settings.data_dir, "ops", offline)  # an archived member certificate travels too
    assert (offline / "finance" / identity.CA_KEY).is_file()
    before = await database_facts(database_url)
    digests = await table_digests(database_url)

    source_env = cli_env(tmp_path / "source", database_env)
    source_env["OMNISTOCK_DATA_DIR"] = str(settings.data_dir)
    made = run_cli("backup", str(tmp_path / "backup"), env=source_env)
    assert made.returncode == 0, made.stderr
    assert "ledger tree size 4" in made.stdout
    backup = tmp_path / "backup"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    assert not list(backup.rglob("offline-ca")) and not list(backup.rglob(SECRETS_FILE))
    keys = list(backup.rglob("*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    trust_material = _files(settings.data_dir / "ledger")
    assert _files(backup / "ledger") == trust_material

    env = cli_env(fresh, None)  # fresh/data does not exist: the restore starts a new cluster in it
    port = free_port()
    env["OMNISTOCK_EMBEDDED_PG_PORT"] = str(port)
    restored = run_cli("restore", str(backup), env=env)
    assert restored.returncode == 0, restored.stderr
    assert "ledger tree size 4" in restored.stdout
    data = fresh / "data"
    assert _files(data / "ledger") == trust_material and not (data / "ledger" / "offline-ca").exists()
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in (data / "ledger").rglob("*.key"))
    assert stat.S_IMODE((data / "pg" / SECRETS_FILE).stat().st_mode) == 0o600  # the new cluster's own passwords

    server = EmbeddedPostgres(data / "pg", port)
    server.start()  # the restore stopped the cluster it started; compare on it again
    try:
        assert await database_facts(server.dsn) == before  # every order, stock level, ledger entry, checkpoint
        assert await table_digests(server.dsn) == digests  # and every other row of every table
        audit = run_cli("ledger", "audit", env=env)  # as the ledger's role, on the restored grants
        assert audit.returncode == 0 and audit.stdout.startswith("OK: 4 entries"), audit.stdout + audit.stderr
        verify = run_cli("ledger", "verify", str(tmp_path / "bundle.json"), "--trust", str(data / "ledger" / "msp"),
                         env=env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        await _services_work_as_their_roles(settings, server, data)
        again = run_cli("backup", str(tmp_path / "backup-of-restored"), env=env)  # the embedded path too
        assert again.returncode == 0, again.stderr
        first = json.loads((backup / "manifest.json").read_text())
        second = json.loads((tmp_path / "backup-of-restored" / "manifest.json").read_text())
        assert second["migrations"] == first["migrations"] and second["ledger"]["tree_size"] == 4
    finally:
        server.stop()


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (content, mode) of every file under `root` but the offline CA folder."""
    return {p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*")) if p.is_file() and "offline-ca" not in p.relative_to(root).parts}


async def _services_work_as_their_roles(settings: Settings, server: EmbeddedPostgres, data: Path) -> None:
    """The orders service on the restored cluster with only its role's URL (no owner to grant anything):
    placing an order runs inventory's published functions, so their owner and EXECUTE grants came back;
    the source's bootstrap admin key is a restored row."""
    restored = settings.model_copy(update={"database_url": None, "data_dir": data, **embedded_service_urls(server)})
    client = TestClient(ServiceTestServer(registry.load("orders").create_app(restored)))
    await client.start_server()
    try:
        body = {"channel": "online", "currency": "EUR", "lines": [{"sku": "TEE", "qty": 1, "unit_price": SKUS["TEE"]}],
                "fulfillment": {"type": "ship", "location_id": "wh-1", "ship_to": LONDON}}
        status, order, _ = await Api(client, ADMIN_KEY).post("/v1/orders", json=body, idem="after-restore")
        assert status == 201, order
    finally:
        await client.close()
    conn = await asyncpg.connect(server.dsn)
    try:
        assert await conn.fetchval("SELECT status FROM orders.orders WHERE id = $1", order["id"]) == "placed"
    finally:
        await conn.close()
