"""The chaincode's rules, in-process: LedgerContract over an in-memory world state.

MemoryPeer is a test double of the peer's side only (committed key/values, a transaction's reads and
buffered writes, its creator and timestamp), with Fabric's rule that a transaction does not read its
own writes; the contract, the shared rules and the trust checks are the real ones. The same contract
runs in the peers of a real network in tests/ledger/test_ledger_contract.py when OMNISTOCK_FABRIC_BIN
is set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import identity, merkle, policy, signing
from ledger.encoding import canonical_bytes, format_timestamp
from ledger.fabric.chaincode.contract import ContractConfig, LedgerContract, Refused
from ledger.fabric.chaincode.state import TILE_WIDTH
from ledger.signing import sign_submission
from shared.settings import Settings
from tests.ledger.conftest import sale, summary


class MemoryPeer:
    """Committed world state, and every value each key ever had (to prove nothing is rewritten)."""

    def __init__(self) -> None:
        self.committed: dict[str, bytes] = {}
        self.history: dict[str, list[bytes]] = {}

    def tx(self, msp_id: str, at: datetime, tx_id: str) -> MemoryTx:
        return MemoryTx(self, msp_id, at, tx_id)


class MemoryTx:
    def __init__(self, peer: MemoryPeer, msp_id: str, at: datetime, tx_id: str) -> None:
        self.peer, self.msp_id, self.at, self.id = peer, msp_id, at, tx_id
        self.writes: dict[str, bytes] = {}

    def creator(self) -> tuple[str, str]:
        return self.msp_id, "-----BEGIN CERTIFICATE-----\n(the peer checked it)\n-----END CERTIFICATE-----\n"

    def tx_timestamp(self) -> datetime:
        return self.at

    def tx_id(self) -> str:
        return self.id

    async def get(self, key: str) -> bytes | None:
        return self.peer.committed.get(key)  # like GetState: not this transaction's own writes

    async def put(self, key: str, value: bytes) -> None:
        assert isinstance(value, bytes)
        self.writes[key] = value

    async def range(self, start: str, end: str) -> AsyncIterator[tuple[str, bytes]]:
        for key in sorted(k for k in self.peer.committed if start <= k < end):
            yield key, self.peer.committed[key]

    def commit(self) -> None:
        for key, value in self.writes.items():
            self.peer.committed[key] = value
            self.peer.history.setdefault(key, []).append(value)


@pytest.fixture(scope="module")
def org_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fabric-cc-orgs")
    identity.init_identities(directory, now=datetime.now(UTC) - timedelta(hours=1))  # valid before the tests' times
    return directory


@pytest.fixture(scope="module")
def finance(org_dir: Path) -> identity.Identity:
    return identity.load_identity(org_dir, "finance")


@pytest.fixture(scope="module")
def contract(org_dir: Path) -> LedgerContract:
    trust = identity.TrustStore.from_dir(identity.msp_dir(org_dir))
    return LedgerContract(ContractConfig(trust=lambda: trust, msp_orgs=policy.DEFAULT_FABRIC_MSP_ORGS))


class Chain:
    """One peer's world state and a clock; `run` invokes and commits one transaction."""

    def __init__(self, contract: LedgerContract) -> None:
        self.contract, self.peer, self.count = contract, MemoryPeer(), 0
        self.now = datetime.now(UTC)

    async def raw(self, function: str, *args: Any, msp: str = "RetailerMSP", at: datetime | None = None) -> bytes:
        self.count += 1
        tx = self.peer.tx(msp, at or self.now, f"tx{self.count}")
        result = await self.contract.invoke(tx, function, [json.dumps(arg) for arg in args])
        tx.commit()
        return result

    async def run(self, function: str, *args: Any, **options: Any) -> Any:
        return json.loads(await self.raw(function, *args, **options))

    async def append(self, signer: identity.Identity, *batches: list[dict[str, Any]], **options: Any) -> list[Any]:
        groups = [{"entries": entries, "submission": sign_submission(signer, entries).as_json()}
                  for entries in batches]
        return await self.run("append", groups, **options)


@pytest.fixture
def chain(contract: LedgerContract) -> Chain:
    return Chain(contract)


def leaves_of(entries: list[dict[str, Any]]) -> list[bytes]:
    return [merkle.leaf_hash(canonical_bytes(e)) for e in entries]


def keyed(n: int, **changes: str) -> dict[str, Any]:
    return {**sale(n), "entry_key": f"sale:o-{n}:2024-05-01", **changes}


# --- the tree ----------------------------------------------------------------------------------


async def test_the_root_equals_the_shared_tree_maths_for_many_sizes(chain: Chain, finance: identity.Identity) -> None:
    # Batch sizes that cross tile edges (256 leaves, 128 level-1 nodes...) at odd offsets.
    sizes = [1, 2, 3, 1, 7, 16, 255, 1, 3, 260, 33, 1, 511, 5]
    entries: list[dict[str, Any]] = []
    for size in sizes:
        batch = [sale(len(entries) + i) for i in range(size)]
        [result] = await chain.append(finance, batch)
        assert [r[0] for r in result["receipts"]] == list(range(len(entries), len(entries) + size))
        entries += batch
        statement = await chain.raw("checkpoint")
        checkpoint = json.loads(statement)
        root = merkle.root(leaves_of(entries))
        assert checkpoint["tree_size"] == len(entries) and checkpoint["root_hash"] == root.hex()
        # The endorsed payload is exactly the statement the offline verifier rebuilds.
        assert statement == signing.checkpoint_statement(len(entries), root, checkpoint["timestamp"])
    assert len(entries) > 4 * TILE_WIDTH
    # Every inclusion proof made from the nodes the chaincode hands out leads to that root.
    size, root = len(entries), merkle.root(leaves_of(entries))
    for seq in (0, 1, 255, 256, 257, 600, size - 2, size - 1):
        wanted = merkle.inclusion_proof_nodes(seq, size)
        got = dict(zip(wanted, (bytes.fromhex(h) for h in await chain.run("nodes", [list(p) for p in wanted])),
                       strict=True))
        proof = merkle.inclusion_proof(seq, size, lambda level, index, found=got: found[level, index])
        assert merkle.verify_inclusion(leaves_of([entries[seq]])[0], seq, size, proof, root)


async def test_a_node_not_yet_complete_is_refused(chain: Chain, finance: identity.Identity) -> None:
    await chain.append(finance, [sale(0), sale(1), sale(2)])
    assert await chain.run("nodes", [[1, 0], [0, 2]]) == [merkle.node_hash(*leaves_of([sale(0), sale(1)])).hex(),
                                                          leaves_of([sale(2)])[0].hex()]
    with pytest.raises(Refused, match=r"\(1, 1\) is not in the log"):
        await chain.run("nodes", [[1, 1]])


# --- who may append what ------------------------------------------------------------------------


async def test_only_finance_may_append_sales_and_summaries(chain: Chain, org_dir: Path) -> None:
    for org in ("ops", "ledger"):
        [refused] = await chain.append(identity.load_identity(org_dir, org), [summary(), sale(1)])
        assert refused["refused"] == "permission_denied" and "only finance may" in refused["message"]
    [refused] = await chain.append(identity.load_identity(org_dir, "audit"), [sale(0)], msp="AuditMSP")
    assert refused["refused"] == "permission_denied"
    assert await chain.run("head") == {"size": 0, "batch_ts": None, "checkpoint": None}
    assert chain.peer.committed == {}  # a refused batch writes nothing at all


async def test_a_finance_batch_relayed_by_another_msp_is_refused(chain: Chain, finance: identity.Identity) -> None:
    [refused] = await chain.append(finance, [sale(0)], msp="AuditMSP")
    assert refused["refused"] == "permission_denied" and "AuditMSP may not submit what 'finance' signs" in \
        refused["message"]
    with pytest.raises(policy.PermissionDenied, match="acts for no organisation"):
        await chain.append(finance, [sale(0)], msp="EvilMSP")
    with pytest.raises(policy.PermissionDenied):
        await chain.run("checkpoint", msp="EvilMSP")
    assert chain.peer.committed == {}


async def test_a_signature_that_does_not_cover_the_entries_sent_is_refused(
        chain: Chain, finance: identity.Identity) -> None:
    signed = sign_submission(finance, [sale(0)]).as_json()
    [refused] = await chain.run("append", [{"entries": [sale(0, amount="1.00")], "submission": signed}])
    assert refused["refused"] == "bad_signature"
    [refused] = await chain.run("append", [{"entries": [sale(0), sale(1)], "submission": signed}])
    assert refused["refused"] == "bad_signature"
    assert chain.peer.committed == {}


async def test_a_signer_from_another_ca_is_refused(chain: Chain, tmp_path: Path) -> None:
    identity.init_identities(tmp_path)  # a finance of a CA the chaincode does not trust
    [refused] = await chain.append(identity.load_identity(tmp_path, "finance"), [sale(0)])
    assert refused["refused"] == "untrusted_signer"
    assert chain.peer.committed == {}


async def test_a_submission_far_from_the_proposal_time_or_older_than_the_log_is_refused(
        chain: Chain, finance: identity.Identity) -> None:
    [late] = await chain.append(finance, [sale(0)], at=chain.now + timedelta(minutes=10))
    assert late["refused"] == "stale_signature"
    [early] = await chain.append(finance, [sale(0)], at=chain.now - timedelta(minutes=10))
    assert early["refused"] == "timestamp_refused"
    older = sign_submission(finance, [sale(1)], format_timestamp(chain.now - timedelta(seconds=5)))
    await chain.append(finance, [sale(0)])
    [stale] = await chain.run("append", [{"entries": [sale(1)], "submission": older.as_json()}])
    assert stale["refused"] == "stale_signature"
    assert (await chain.run("head"))["size"] == 1


# --- entry keys: written once, never rewritten ---------------------------------------------------


async def test_an_entry_key_is_written_once_and_a_retry_gets_the_same_receipts(
        chain: Chain, finance: identity.Identity) -> None:
    [first] = await chain.append(finance, [keyed(0), keyed(1), sale(2)])
    before = dict(chain.peer.committed)
    [again] = await chain.append(finance, [keyed(1), keyed(0)])
    assert again == {"receipts": [first["receipts"][1], first["receipts"][0]]}
    assert chain.peer.committed == before  # nothing written: the tree did not grow
    [partly] = await chain.append(finance, [keyed(0), keyed(4), sale(5)])
    assert partly["refused"] == "already_appended" and partly["existing"] == {"0": first["receipts"][0]}
    [rest] = await chain.append(finance, [keyed(4), sale(5)])
    assert [r[0] for r in rest["receipts"]] == [3, 4]


async def test_other_content_under_a_used_entry_key_is_refused(chain: Chain, finance: identity.Identity) -> None:
    [stored] = await chain.append(finance, [keyed(0)])
    [refused] = await chain.append(finance, [keyed(5), keyed(0, sales_total="99.00")])
    assert refused["refused"] == "duplicate_entry_key" and refused["existing"] == {"1": stored["receipts"][0]}
    assert (await chain.run("head"))["size"] == 1


async def test_a_key_used_earlier_in_the_same_transaction_counts(chain: Chain, finance: identity.Identity) -> None:
    # GetState does not see the transaction's own writes; the contract must remember them.
    first, same, other = await chain.append(finance, [keyed(0)], [keyed(0)], [keyed(0, sales_total="5.00")])
    assert same == {"receipts": first["receipts"]}
    assert other["refused"] == "duplicate_entry_key"
    assert (await chain.run("head"))["size"] == 1


@pytest.mark.parametrize(("entries", "message"), [
    ([{**sale(0), "amount": 10.5}], "floats are not allowed"),
    ([{"business_day": "2024-05-01"}], "string 'kind'"),
    ([keyed(6), keyed(6, sales_total="1.00")], "repeats the entry_key"),
    ([{**sale(7), "entry_key": 7}], "entry_key must be a string"),
    ([{**sale(7), "entry_key": ""}], "entry_key must be a string"),
])
async def test_malformed_entries_are_refused(chain: Chain, finance: identity.Identity, entries: list[Any],
                                             message: str) -> None:
    try:
        signed = sign_submission(finance, entries).as_json()
    except ValueError:  # floats cannot even be signed
        signed = sign_submission(finance, [sale(0)]).as_json()
    [refused] = await chain.run("append", [{"entries": entries, "submission": signed}])
    assert refused["refused"] == "invalid" and message in refused["message"]
    assert chain.peer.committed == {}


@pytest.mark.parametrize("groups", [[], {"entries": []}, [{"entries": [], "submission": {}}], [["x"]],
                                    [{"entries": [sale(0)], "submission": {"org": "finance"}}]])
async def test_malformed_batches_are_refused(chain: Chain, groups: Any) -> None:
    try:
        results = await chain.run("append", groups)
    except Refused:
        results = None
    assert results is None or all(r["refused"] == "invalid" for r in results)
    assert chain.peer.committed == {}


async def test_the_ledger_offers_no_way_to_rewrite_or_delete(chain: Chain, finance: identity.Identity) -> None:
    for function in ("put", "delete", "rewrite", "_append_group", "invoke", "__init__"):
        with pytest.raises(Refused, match="unknown transaction"):
            await chain.run(function, "head", "{}")
    with pytest.raises(Refused, match="JSON"):
        await chain.contract.invoke(chain.peer.tx("RetailerMSP", chain.now, "x"), "nodes", ["[[0,"])


# --- many batches per transaction ----------------------------------------------------------------


async def test_many_batches_in_one_transaction_are_judged_one_by_one(
        chain: Chain, finance: identity.Identity, org_dir: Path) -> None:
    ops = identity.load_identity(org_dir, "ops")
    groups = [{"entries": [sale(0), sale(1)], "submission": sign_submission(finance, [sale(0), sale(1)]).as_json()},
              {"entries": [sale(2)], "submission": sign_submission(ops, [sale(2)]).as_json()},
              {"entries": [summary()], "submission": sign_submission(finance, [summary()]).as_json()}]
    first, refused, third = await chain.run("append", groups)
    assert [r[0] for r in first["receipts"]] == [0, 1] and refused["refused"] == "permission_denied"
    assert third["receipts"] == [[2, leaves_of([summary()])[0].hex(), 1]]
    batches = await chain.run("batches", 0, 2)
    assert [(b["first_seq"], b["last_seq"], b["batch_id"], b["org"]) for b in batches] == [(0, 1, 0, "finance"),
                                                                                          (2, 2, 1, "finance")]
    assert batches[0]["entries"] == [sale(0), sale(1)]
    # The batch as stored verifies as its submitter signed it.
    b = batches[0]
    statement = signing.stored_batch_statement(b["statement"], b["org"], 0, 1, bytes.fromhex(b["batch_root"]),
                                               b["timestamp"])
    from cryptography import x509
    assert signing.verify(x509.load_pem_x509_certificate(b["cert_pem"].encode()), statement, b["signature"])


async def test_nothing_recorded_is_ever_rewritten(chain: Chain, finance: identity.Identity) -> None:
    n = 0
    for size in (3, 300, 1, 40, 200):
        await chain.append(finance, [keyed(n + i) for i in range(size)], [sale(n + size)])
        n += size + 1
        await chain.raw("checkpoint")
        await chain.append(finance, [keyed(n - 2)])  # a retry: nothing written
    for key, values in chain.peer.history.items():
        if key == "head":
            continue
        if key.startswith("t/"):  # a tile only grows: what it held stays, in place
            assert all(later.startswith(earlier) for earlier, later in zip(values, values[1:], strict=False)), key
        else:
            assert len(values) == 1, key


# --- checkpoints ---------------------------------------------------------------------------------


async def test_a_checkpoint_without_growth_is_the_last_one_and_writes_nothing(
        chain: Chain, finance: identity.Identity) -> None:
    with pytest.raises(Refused, match="empty"):
        await chain.run("checkpoint")
    await chain.append(finance, [sale(0)])
    first = await chain.raw("checkpoint")
    before = dict(chain.peer.committed)
    assert await chain.raw("checkpoint", at=chain.now + timedelta(seconds=30)) == first
    assert chain.peer.committed == before
    statement = json.loads(first)
    assert await chain.run("checkpoint_of_size", 1) == {"tree_size": 1, "root_hash": statement["root_hash"],
                                                        "timestamp": statement["timestamp"], "txid": "tx3"}
    assert await chain.run("checkpoint_of_size", 2) is None


async def test_a_checkpoint_is_never_dated_before_what_it_covers(chain: Chain, finance: identity.Identity) -> None:
    ahead = format_timestamp(chain.now + timedelta(seconds=60))  # a submitter's clock a minute fast
    entries = [sale(0)]
    submission = sign_submission(finance, entries, ahead)
    await chain.run("append", [{"entries": entries, "submission": submission.as_json()}])
    first = await chain.run("checkpoint")
    assert first["timestamp"] == ahead
    later = sign_submission(finance, [sale(1)], format_timestamp(chain.now + timedelta(seconds=61)))
    [accepted] = await chain.run("append", [{"entries": [sale(1)], "submission": later.as_json()}])
    assert "receipts" in accepted
    second = await chain.run("checkpoint", at=chain.now - timedelta(seconds=30))  # a proposal from a slow clock
    assert second["timestamp"] >= first["timestamp"] and second["tree_size"] == 2


async def test_find_by_entry_key_and_order(chain: Chain, finance: identity.Identity) -> None:
    await chain.append(finance, [keyed(1), keyed(2), {**summary(), "entry_key": "sale:o-1:2024-05-01"}, keyed(12)])
    assert await chain.run("find", "sale:o-1:2024-05-01", None, 50) == [[0, "reconciled_sale"],
                                                                       [2, "reconciliation_summary"]]
    assert await chain.run("find", None, "o-1", 50) == [[0, "reconciled_sale"]]
    assert await chain.run("find", None, "o-9", 50) == []
    with pytest.raises(Refused):
        await chain.run("find", None, None, 50)


def test_the_settings_default_to_the_policy_names() -> None:
    settings = Settings()
    assert {m: frozenset(o) for m, o in settings.fabric_msp_orgs.items()} == policy.DEFAULT_FABRIC_MSP_ORGS
    assert tuple(settings.fabric_checkpoint_endorsers) == policy.DEFAULT_CHECKPOINT_ENDORSERS


async def test_a_refusal_reaches_the_client_as_the_embedded_backends_exception(
        chain: Chain, finance: identity.Identity, org_dir: Path) -> None:
    from ledger.fabric.refusals import refusal, whole_refusal
    from ledger.port import AlreadyAppended, BadRange, DuplicateEntryKey, Receipt

    [stored] = await chain.append(finance, [keyed(0)])
    receipt = Receipt(*stored["receipts"][0])
    cases = [
        (await chain.append(finance, [keyed(0, sales_total="9.00")]), DuplicateEntryKey),
        (await chain.append(finance, [keyed(0), keyed(1)]), AlreadyAppended),
        (await chain.append(identity.load_identity(org_dir, "ops"), [sale(3)]), policy.PermissionDenied),
        (await chain.append(finance, [sale(4)], at=chain.now + timedelta(minutes=10)), signing.StaleSignature),
    ]
    for [result], cls in cases:
        exc = refusal(result)
        assert type(exc) is cls, (result, exc)
        if isinstance(exc, DuplicateEntryKey | AlreadyAppended):
            assert exc.existing == {0: receipt}
    with pytest.raises(policy.PermissionDenied) as whole:  # the whole transaction: an error response
        await chain.append(finance, [sale(0)], msp="EvilMSP")
    assert isinstance(whole_refusal(f"PermissionDenied: {whole.value}"), policy.PermissionDenied)
    assert isinstance(whole_refusal("Refused: tree node (1, 9) is not in the log"), BadRange)


async def test_every_checkpoint_is_listed_in_size_order(chain: Chain, finance: identity.Identity) -> None:
    sizes = []
    for n in range(5):
        await chain.append(finance, [sale(10 * n + i) for i in range(n + 1)])
        sizes.append((await chain.run("checkpoint"))["tree_size"])
    listed = await chain.run("checkpoints", 1, 100)
    assert [c["tree_size"] for c in listed] == sizes == [1, 3, 6, 10, 15]
    assert [c["tree_size"] for c in await chain.run("checkpoints", 4, 2)] == [6, 10]
    assert all(c["txid"].startswith("tx") for c in listed)
