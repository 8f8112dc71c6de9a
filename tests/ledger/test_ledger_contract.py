"""The port's contract, run against every backend (tests/ledger/conftest.py BACKENDS)."""

from __future__ import annotations

import asyncio

import pytest

from ledger import merkle, policy, signing
from ledger.bundle import dump_bundle
from ledger.identity import Identity, TrustStore, load_identity
from ledger.policy import PermissionDenied
from ledger.port import AlreadyAppended, BadRange, DuplicateEntryKey, EntryNotFound, Ledger, NotCosigned
from ledger.submit import sign_and_append
from ledger.verify import verify_bundle, verify_bundle_bytes
from shared.settings import Settings
from tests.ledger.conftest import CHECKPOINT_EVERY, append, checkpoint_signers, cosign, is_fabric, sale, summary


async def test_appends_get_consecutive_seqs_from_zero(ledger: Ledger, finance_id: Identity) -> None:
    first = await append(ledger, [sale(0), sale(1), summary()], finance_id)
    second = await append(ledger, [sale(3)], finance_id)
    assert [r.seq for r in first + second] == [0, 1, 2, 3]
    assert first[0].batch_id == first[2].batch_id != second[0].batch_id
    assert first[1].leaf_hash == merkle.leaf_hash(b'{"business_day":"2024-05-01","channel":"online",'
                                                  b'"currency":"EUR","kind":"reconciled_sale","location_id":null,'
                                                  b'"order_id":"o-1","sales_total":"10.00"}').hex()


async def test_only_finance_may_append_sales_and_a_denied_batch_writes_nothing(
        ledger: Ledger, ledger_settings: Settings, finance_id: Identity) -> None:
    for org in ("ops", "audit", "ledger"):
        with pytest.raises(PermissionDenied):
            await append(ledger, [summary(), sale(1)], load_identity(ledger_settings.data_dir, org))
    assert [r.seq for r in await append(ledger, [sale(0)], finance_id)] == [0]


async def test_an_entry_comes_with_a_proof_to_a_signed_checkpoint(ledger: Ledger, finance_id: Identity,
                                                                    ledger_settings: Settings) -> None:
    await append(ledger, [sale(i) for i in range(7)], finance_id)
    cut = await ledger.cut_checkpoint()  # embedded: the ledger's own signature; Fabric: both peers' endorsements
    assert [s["org"] for s in cut["signatures"]] == checkpoint_signers(ledger, cosigned=False)
    await cosign(ledger, finance_id, ledger_settings)  # finance's, made where finance runs
    for seq in range(7):
        found = await ledger.entry(seq)
        assert found["entry"] == sale(seq)
        cp = found["checkpoint"]
        assert cp["tree_size"] == 7
        assert merkle.verify_inclusion(bytes.fromhex(found["leaf_hash"]), seq, 7,
                                       [bytes.fromhex(h) for h in found["inclusion_proof"]],
                                       bytes.fromhex(cp["root_hash"]))
    statement = signing.checkpoint_statement(cp["tree_size"], bytes.fromhex(cp["root_hash"]), cp["timestamp"])
    assert [s["org"] for s in cp["signatures"]] == checkpoint_signers(ledger)
    for sig in cp["signatures"]:
        from cryptography import x509
        signed = statement
        if "endorsement" in sig:  # a peer signs its response payload and its identity, which hold the statement
            from ledger.fabric.protocol import endorsed_bytes
            signed = endorsed_bytes(sig["endorsement"], sig["cert_pem"], statement)
        assert signing.verify(x509.load_pem_x509_certificate(sig["cert_pem"].encode()), signed, sig["signature"])


async def test_unknown_seq_is_not_found(ledger: Ledger, finance_id: Identity) -> None:
    with pytest.raises(EntryNotFound):
        await ledger.entry(0)
    await append(ledger, [sale(0)], finance_id)
    with pytest.raises(EntryNotFound):
        await ledger.entry(1)


async def test_a_checkpoint_is_cut_every_n_entries(ledger: Ledger, finance_id: Identity) -> None:
    assert await ledger.checkpoint() is None
    await append(ledger, [sale(i) for i in range(CHECKPOINT_EVERY - 1)], finance_id)
    assert await ledger.checkpoint() is None
    await append(ledger, [sale(CHECKPOINT_EVERY)], finance_id)
    latest = await ledger.checkpoint()
    assert latest is not None and latest["tree_size"] == CHECKPOINT_EVERY
    assert latest["root_hash"] == merkle.root(
        [merkle.leaf_hash(signing.canonical_bytes(sale(i))) for i in range(CHECKPOINT_EVERY - 1)]
        + [merkle.leaf_hash(signing.canonical_bytes(sale(CHECKPOINT_EVERY)))]).hex()


async def test_cutting_without_growth_keeps_the_latest_checkpoint(ledger: Ledger, finance_id: Identity) -> None:
    assert await ledger.cut_checkpoint() is None  # an empty log has nothing to sign
    await append(ledger, [sale(0)], finance_id)
    first = await ledger.cut_checkpoint()
    assert first == await ledger.cut_checkpoint() == await ledger.checkpoint()


async def test_consistency_between_two_checkpoints_verifies(ledger: Ledger, finance_id: Identity) -> None:
    sizes, roots = [], []
    for n in (3, 5, 8, 1):
        await append(ledger, [sale(i) for i in range(n)], finance_id)
        cp = await ledger.cut_checkpoint()
        assert cp is not None
        sizes.append(cp["tree_size"])
        roots.append(bytes.fromhex(cp["root_hash"]))
    for i, first in enumerate(sizes):
        for j in range(i, len(sizes)):
            got = await ledger.consistency(first, sizes[j])
            assert got["first_root"] == roots[i].hex() and got["second_root"] == roots[j].hex()
            assert got["checkpoint"]["tree_size"] == sizes[j]
            assert merkle.verify_consistency(first, sizes[j], [bytes.fromhex(h) for h in got["proof"]],
                                             roots[i], roots[j])
    assert (await ledger.consistency(3))["second"] == 17
    with pytest.raises(BadRange):
        await ledger.consistency(5, 18)


async def test_an_export_verifies_offline_and_a_flipped_byte_does_not(
        ledger: Ledger, finance_id: Identity, ledger_trust: TrustStore, ledger_settings: Settings) -> None:
    await append(ledger, [sale(i) for i in range(10)], finance_id)
    await ledger.cut_checkpoint()
    earlier = await cosign(ledger, finance_id, ledger_settings)
    await append(ledger, [summary(), *[sale(i) for i in range(10, 20)]], finance_id)
    if not is_fabric(ledger):  # on Fabric every checkpoint is signed by all its required orgs at once
        with pytest.raises(NotCosigned):  # a bundle proves against a checkpoint every required org signed
            await ledger.export(4, 14, since=earlier["tree_size"])
    await ledger.cut_checkpoint()
    await cosign(ledger, finance_id, ledger_settings)
    bundle = await ledger.export(4, 14, since=earlier["tree_size"])
    report = verify_bundle(bundle, ledger_trust)
    assert report.ok, report.summary()
    assert report.entries_checked == 11 and bundle["checkpoint"]["tree_size"] == 21
    assert report.checkpoint_signers == sorted(checkpoint_signers(ledger))
    assert report.required_signers == (list(policy.DEFAULT_CHECKPOINT_ENDORSERS) if is_fabric(ledger)
                                       else ["ledger", "finance"])
    raw = dump_bundle(bundle)
    position = raw.index(b'"o-9"') + 3
    flipped = raw[:position] + bytes([raw[position] ^ 1]) + raw[position + 1:]
    bad = verify_bundle_bytes(flipped, ledger_trust)
    assert not bad.ok and bad.first_bad_seq == 9


async def test_export_refuses_ranges_beyond_the_log(ledger: Ledger, finance_id: Identity) -> None:
    await append(ledger, [sale(0)], finance_id)
    with pytest.raises(BadRange):
        await ledger.export(0, 1)
    with pytest.raises(BadRange):
        await ledger.export(0, 0, since=7)


async def test_an_honest_log_passes_the_audit(ledger: Ledger, finance_id: Identity) -> None:
    for n in range(1, 30, 7):
        await append(ledger, [sale(i) for i in range(n)], finance_id)
        await ledger.cut_checkpoint()
    await append(ledger, [summary()], finance_id)  # not yet checkpointed: still covered by its batch
    report = await ledger.audit()
    assert report.ok, report.summary()
    assert report.entries_checked == report.tree_size == 1 + 8 + 15 + 22 + 29 + 1
    assert report.batches_checked == 6


async def test_concurrent_appenders_leave_no_gaps_and_the_log_audits(ledger: Ledger, finance_id: Identity) -> None:
    # Each signs where it runs; one overtaken by a later-signed batch signs again (ledger.submit).
    results = await asyncio.gather(*[sign_and_append(ledger, finance_id, [sale(i), sale(i + 1)], attempts=50)
                                     for i in range(40)])
    seqs = sorted(r.seq for receipts in results for r in receipts)
    assert seqs == list(range(80))
    for receipts in results:  # each batch got a contiguous run
        assert receipts[1].seq == receipts[0].seq + 1
    report = await ledger.audit()
    assert report.ok, report.summary()


async def test_floats_have_no_canonical_form_and_are_refused(ledger: Ledger, finance_id: Identity) -> None:
    with pytest.raises(ValueError):  # the submitter cannot even sign it
        await append(ledger, [{**sale(0), "amount": 10.5}], finance_id)
    honest = signing.sign_submission(finance_id, [sale(0)])
    with pytest.raises(ValueError):
        await ledger.append([{**sale(0), "amount": 10.5}], honest)
    assert await ledger.cut_checkpoint() is None


def keyed(n: int, **changes: str) -> dict[str, object]:
    return {**sale(n), "entry_key": f"sale:o-{n}:2024-05-01", **changes}


async def test_an_entry_key_is_written_once_and_a_retry_gets_the_same_receipts(
        ledger: Ledger, finance_id: Identity) -> None:
    first = await append(ledger, [keyed(0), keyed(1), sale(2)], finance_id)
    # The retry after a crash that lost those receipts: nothing but known entries gets their receipts,
    # and no batch at all: the tree does not grow.
    assert await append(ledger, [keyed(1), keyed(0)], finance_id) == [first[1], first[0]]
    # Known entries beside new ones: the signature covers all of them, so nothing is written; the
    # submitter records the receipts it is handed and signs the rest anew.
    with pytest.raises(AlreadyAppended) as partly:
        await append(ledger, [keyed(0), keyed(4), sale(5)], finance_id)
    assert partly.value.existing == {0: first[0]}
    rest = await append(ledger, [keyed(4), sale(5)], finance_id)
    assert [r.seq for r in rest] == [3, 4]
    # A key repeated inside one append is refused (signed twice, stored once, it could not verify).
    with pytest.raises(ValueError, match="repeats the entry_key"):
        await append(ledger, [keyed(6), keyed(6)], finance_id)
    checkpoint = await ledger.cut_checkpoint()
    assert checkpoint is not None and checkpoint["tree_size"] == 5
    report = await ledger.audit()
    assert report.ok, report.summary()


async def test_other_content_under_a_used_entry_key_is_refused_and_writes_nothing(
        ledger: Ledger, finance_id: Identity) -> None:
    [stored] = await append(ledger, [keyed(0)], finance_id)
    with pytest.raises(DuplicateEntryKey) as refused:
        await append(ledger, [keyed(5), keyed(0, sales_total="99.00")], finance_id)
    assert refused.value.existing == {1: stored}
    with pytest.raises(ValueError, match="repeats the entry_key"):
        await append(ledger, [keyed(6), keyed(6, sales_total="1.00")], finance_id)
    with pytest.raises(ValueError, match="entry_key must be a string"):
        await append(ledger, [{**sale(7), "entry_key": 7}], finance_id)
    checkpoint = await ledger.cut_checkpoint()
    assert checkpoint is not None and checkpoint["tree_size"] == 1
