"""The Fabric backend on a real local network (OMNISTOCK_FABRIC_BIN): what only a network can show.

A required endorser down: appends stall and resume with nothing acknowledged lost. One organisation
alone cannot write. An export verifies offline with `omnistock ledger verify BUNDLE --trust DIR`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ledger import identity, policy
from ledger.bundle import dump_bundle
from ledger.cli import ledger as ledger_cli
from ledger.fabric.backend import FabricLedger
from ledger.fabric.gateway import Gateway, GatewayConfig, NotCommitted
from ledger.fabric.names import AUDIT, RETAILER
from ledger.submit import sign_and_append
from shared.settings import Settings
from tests.ledger.conftest import append, fabric_ledger, sale


@pytest.fixture(scope="module")
async def fabric(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FabricLedger, Settings]]:
    """One network for this module's tests (each makes its own entries and reads only those)."""
    data = tmp_path_factory.mktemp("fabric-ledger")
    identity.init_identities(data, now=datetime.now(UTC) - timedelta(hours=1))
    settings = Settings(data_dir=data, ledger_checkpoint_every=10_000)  # type: ignore[call-arg]
    async with fabric_ledger(settings) as port:
        yield port, settings


def keyed(n: int) -> dict[str, Any]:
    return {**sale(n), "entry_key": f"sale:o-{n}:2024-05-01"}


@pytest.mark.parametrize("down", [AUDIT, RETAILER], ids=lambda org: org.key)
async def test_appends_stall_while_a_required_peer_is_down_and_resume_with_nothing_lost(
        fabric: tuple[FabricLedger, Settings], down: Any) -> None:
    """The audit firm's peer (a required endorser) or the retailer's (an endorser and the gateway the
    backend talks to), killed outright."""
    ledger, settings = fabric
    finance = identity.load_identity(settings.data_dir, "finance")
    network = ledger.network  # type: ignore[attr-defined]
    before = await append(ledger, [keyed(1000 + down.offset)], finance)
    first = 2000 + 100 * down.offset
    await asyncio.to_thread(network.stop_peer, down, crash=True)
    try:
        tasks = [asyncio.create_task(sign_and_append(ledger, finance, [keyed(first + 2 * i), keyed(first + 2 * i + 1)]))
                 for i in range(20)]
        done, _ = await asyncio.wait(tasks, timeout=8)
        # Without that peer no append can be endorsed, so none is acknowledged...
        assert not done, [t.result() for t in done]
    finally:
        await asyncio.to_thread(network.start_peer, down)
    # ...and once it is back, every one of them is, in order, with nothing lost.
    receipts = [r for batch in await asyncio.gather(*tasks) for r in batch]
    seqs = sorted(r.seq for r in receipts)
    assert seqs == list(range(before[0].seq + 1, before[0].seq + 41))
    for receipt in receipts:
        stored = await ledger.entry(receipt.seq)
        assert stored["leaf_hash"] == receipt.leaf_hash
    report = await ledger.audit()
    assert report.ok, report.summary()


async def test_the_retailers_peer_alone_cannot_write(fabric: tuple[FabricLedger, Settings]) -> None:
    ledger, settings = fabric
    finance = identity.load_identity(settings.data_dir, "finance")
    await append(ledger, [keyed(3000)], finance)
    size = (await ledger.checkpoint() or {}).get("tree_size")
    network = ledger.network  # type: ignore[attr-defined]
    alone = Gateway(GatewayConfig.from_network(network.description(), RETAILER.key,
                                               endorsing_msps=[RETAILER.msp_id]))
    try:
        prepared = await alone.endorse("checkpoint")  # endorsed by the retailer's peer only
        with pytest.raises(NotCommitted, match="ENDORSEMENT_POLICY_FAILURE"):
            await alone.submit_and_commit(prepared)
    finally:
        await alone.close()
    assert (await ledger.checkpoint() or {}).get("tree_size") == size  # nothing was recorded


async def test_an_export_verifies_offline_with_the_cli(fabric: tuple[FabricLedger, Settings], tmp_path: Path) -> None:
    ledger, settings = fabric
    finance = identity.load_identity(settings.data_dir, "finance")
    receipts = await append(ledger, [keyed(4000 + i) for i in range(30)], finance)
    bundle = await ledger.export(receipts[0].seq, receipts[-1].seq)
    # What an auditor holds: our organisations' certificates and each peer organisation's CA.
    trust = tmp_path / "trust"
    shutil.copytree(identity.msp_dir(settings.data_dir), trust)
    for org in ledger.network.description()["orgs"].values():  # type: ignore[attr-defined]
        shutil.copy(org["ca_cert"], trust)
    path = tmp_path / "bundle.json"
    path.write_bytes(dump_bundle(bundle))
    result = CliRunner().invoke(ledger_cli, ["verify", str(path), "--trust", str(trust)])
    assert result.exit_code == 0, result.output
    assert "checkpoint signed by audit.omnistock.local, retailer.omnistock.local" in result.output
    # An auditor who trusts only its own firm's CA (besides ours) and its own peer's endorsement:
    own = tmp_path / "own"
    shutil.copytree(identity.msp_dir(settings.data_dir), own)
    shutil.copy(ledger.network.description()["orgs"]["audit"]["ca_cert"], own)  # type: ignore[attr-defined]
    result = CliRunner().invoke(ledger_cli, ["verify", str(path), "--trust", str(own)])
    assert result.exit_code == 1 and "no valid signature by 'retailer.omnistock.local'" in result.output
    result = CliRunner().invoke(ledger_cli, ["verify", str(path), "--trust", str(own),
                                             "--endorser", "audit.omnistock.local"])
    assert result.exit_code == 0, result.output
    raw = path.read_bytes()
    position = raw.index(b'"o-4007"') + 3
    path.write_bytes(raw[:position] + bytes([raw[position] ^ 1]) + raw[position + 1:])
    result = CliRunner().invoke(ledger_cli, ["verify", str(path), "--trust", str(trust)])
    assert result.exit_code == 1 and f"first bad seq: {receipts[7].seq}" in result.output


async def test_the_ledger_service_serves_the_fabric_log_over_the_same_http_api(
        service: Any, make_key: Any, settings: Settings) -> None:
    from tests.ledger.conftest import fabric_network_for

    identity.init_identities(settings.data_dir)  # `omnistock ledger init`, then `omnistock ledger fabric up`
    async with fabric_network_for(settings, second=True) as network:  # this module's own network is up too
        fabric = {"ledger_backend": "fabric", "fabric_dir": network.settings.fabric_dir}
        api = await service("ledger", **fabric)
        finance, auditor = api.as_key(await make_key("finance")), api.as_key(await make_key("auditor"))
        entries = [keyed(1), keyed(2), sale(3)]
        member = identity.load_identity(settings.data_dir, "finance")
        from ledger.signing import sign_submission

        body = {"entries": entries, "submission": sign_submission(member, entries).as_json()}
        for _ in range(60):  # the gateway finds the audit firm's peer a few seconds after `up`
            status, answer, _ = await finance.post("/v1/ledger/entries", idem="one", json=body)
            if status != 503:
                break
            await asyncio.sleep(1)
        assert status == 201, answer
        status, checkpoint, _ = await auditor.get("/v1/ledger/checkpoint")
        assert status == 200 and checkpoint["tree_size"] == 3
        assert sorted(s["org"] for s in checkpoint["signatures"]) == sorted(policy.DEFAULT_CHECKPOINT_ENDORSERS)
        status, entry, _ = await auditor.get("/v1/ledger/entries/1")
        assert status == 200 and entry["entry"] == keyed(2)
        status, _, _ = await api.as_key(await make_key("ops")).get("/v1/ledger/entries/1")
        assert status == 403  # reading policy is the service's, whichever backend


async def test_checkpoints_are_followed_through_chaincode_events(fabric: tuple[FabricLedger, Settings]) -> None:
    ledger, settings = fabric
    finance = identity.load_identity(settings.data_dir, "finance")
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for checkpoint in ledger.follow_checkpoints(start_block=None):  # from the next commit on
            seen.append(checkpoint)

    following = asyncio.create_task(follow())
    try:
        await asyncio.sleep(1)  # the stream is open before the checkpoints are cut
        cut = []
        for n in range(2):
            await append(ledger, [keyed(5000 + n)], finance)
            cut.append(await ledger.cut_checkpoint())
        for _ in range(600):  # each event comes once its block is committed on the gateway's peer
            if {c["tree_size"] for c in cut} <= {c["tree_size"] for c in seen}:
                break
            await asyncio.sleep(0.1)
    finally:
        following.cancel()
    by_size = {c["tree_size"]: c for c in seen}
    for checkpoint in cut:  # each one as endorsed: same root, same time, the two peers' signatures
        assert by_size[checkpoint["tree_size"]] == checkpoint
