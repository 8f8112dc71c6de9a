"""The offline verifier on bundles built here from real signatures, honest and tampered."""

import json
import random
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import identity, merkle, signing
from ledger.bundle import batch_record, dump_bundle, entry_record, make_bundle
from ledger.encoding import canonical_bytes, format_timestamp
from ledger.identity import Identity
from ledger.verify import VerificationReport, verify_bundle, verify_bundle_bytes, verify_bundle_file

T0 = datetime(2024, 2, 1, tzinfo=UTC)


def at(minutes: int) -> str:
    return format_timestamp(T0 + timedelta(minutes=minutes))


def sale(n: int) -> dict[str, Any]:
    return {
        "kind": "reconciled_sale",
        "business_day": "2024-01-31",
        "channel": "store" if n % 2 else "online",
        "location_id": f"store-{n % 3}",
        "order_id": f"order-{n}",
        "amount": f"{n * 7}.{n % 100:02d}",
        "currency": "EUR",
    }


def summary(n: int) -> dict[str, Any]:
    return {"kind": "reconciliation_summary", "business_day": "2024-01-31", "matched": n, "total": f"{n}.00"}


class MemoryLog:
    """Drives the pure core the way a storage backend does: append batches, cut checkpoints, export."""

    def __init__(self) -> None:
        self.nodes = merkle.MemoryNodeStore()
        self.entries: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []

    def append(self, signer: Identity, entries: Sequence[dict[str, Any]], timestamp: str) -> None:
        first = self.nodes.size
        leaves = [merkle.leaf_hash(canonical_bytes(entry)) for entry in entries]
        for leaf in leaves:
            self.nodes.append(leaf)
        self.entries += entries
        self.batches.append(signing.sign_batch(signer, first, first + len(entries) - 1, leaves, timestamp))

    def checkpoint(self, signers: Sequence[Identity], timestamp: str) -> dict[str, Any]:
        return signing.sign_checkpoint(self.nodes.size, self.nodes.root(), timestamp, signers)

    def leaf(self, seq: int) -> bytes:
        return self.nodes.get_node(0, seq)

    def export(
        self,
        checkpoint: Mapping[str, Any],
        seqs: Sequence[int] | None = None,
        earlier: Mapping[str, Any] | None = None,
        with_leaf_hashes: bool = True,
    ) -> dict[str, Any]:
        size = checkpoint["tree_size"]
        seqs = range(size) if seqs is None else seqs
        entries = [entry_record(s, self.entries[s], merkle.inclusion_proof(s, size, self.nodes.get_node)) for s in seqs]
        batches = [
            batch_record(
                b, [self.leaf(s) for s in range(b["first_seq"], b["last_seq"] + 1)] if with_leaf_hashes else None
            )
            for b in self.batches
            if b["last_seq"] < size and any(b["first_seq"] <= s <= b["last_seq"] for s in seqs)
        ]
        if earlier is None:
            return make_bundle(checkpoint, entries, batches)
        proof = merkle.consistency_proof(earlier["tree_size"], size, self.nodes.get_node)
        return make_bundle(checkpoint, entries, batches, earlier, proof)


@pytest.fixture(scope="module")
def signers(data_dir: Path) -> dict[str, Identity]:
    return {org: identity.load_identity(data_dir, org) for org in identity.ORGS}


@pytest.fixture(scope="module")
def log(signers: dict[str, Identity]) -> MemoryLog:
    log = MemoryLog()
    log.append(signers["finance"], [sale(n) for n in range(5)], at(1))
    log.append(signers["finance"], [sale(n) for n in range(5, 7)] + [summary(7)], at(2))
    log.append(signers["finance"], [sale(8)], at(3))
    log.append(signers["finance"], [sale(n) for n in range(9, 12)] + [summary(4)], at(4))
    return log


@pytest.fixture(scope="module")
def cosigners(signers: dict[str, Identity]) -> list[Identity]:
    return [signers["ledger"], signers["finance"]]


@pytest.fixture(scope="module")
def bundle(log: MemoryLog, cosigners: list[Identity]) -> dict[str, Any]:
    earlier = signing.sign_checkpoint(8, merkle.root([log.leaf(s) for s in range(8)]), at(2), cosigners)
    return log.export(log.checkpoint(cosigners, at(5)), earlier=earlier)


@pytest.fixture(scope="module")
def auditor_trust_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an auditor holds: the organisations' certificates, no keys."""
    target = tmp_path_factory.mktemp("trust")
    for pem in identity.msp_dir(data_dir).rglob("*.pem"):
        shutil.copy(pem, target / f"{pem.parent.name}-{pem.name}")
    return target


def check(bundle: Mapping[str, Any], trust: identity.TrustStore) -> VerificationReport:
    # Round-trip through bytes: the verifier must never depend on objects shared with the writer.
    return verify_bundle(json.loads(dump_bundle(bundle)), trust)


def copy(bundle: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(dump_bundle(bundle))


def test_an_honest_bundle_verifies(bundle: dict[str, Any], auditor_trust_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(dump_bundle(bundle))
    report = verify_bundle_file(path, auditor_trust_dir)
    assert report.ok, report.summary()
    assert (report.entries_checked, report.batches_checked, report.tree_size) == (13, 4, 13)
    assert report.summary().startswith("OK")


def test_a_pretty_printed_bundle_still_verifies(bundle: dict[str, Any], data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle, indent=2))
    assert verify_bundle_file(path, identity.msp_dir(data_dir)).ok


def test_a_partial_export_verifies_through_the_batches_leaf_hashes(
    log: MemoryLog, cosigners: list[Identity], trust: identity.TrustStore
) -> None:
    summaries_only = log.export(log.checkpoint(cosigners, at(5)), seqs=[7, 12])
    assert len(summaries_only["batches"]) == 2
    assert check(summaries_only, trust).ok


def test_a_batch_without_leaf_hashes_needs_all_of_its_entries(
    log: MemoryLog, cosigners: list[Identity], trust: identity.TrustStore
) -> None:
    checkpoint = log.checkpoint(cosigners, at(5))
    assert check(log.export(checkpoint, with_leaf_hashes=False), trust).ok
    report = check(log.export(checkpoint, seqs=[0, 1, 8], with_leaf_hashes=False), trust)
    assert not report.ok
    assert report.first_bad_seq == 0
    assert "neither leaf_hashes nor all of its entries" in report.summary()


def test_an_altered_entry_is_named_by_seq(bundle: dict[str, Any], trust: identity.TrustStore) -> None:
    tampered = copy(bundle)
    tampered["entries"][6]["entry"]["amount"] = "0.01"
    report = check(tampered, trust)
    assert report.first_bad_seq == 6
    # An alteration made consistently (leaf hash recomputed) still fails the proof and the batch.
    tampered["entries"][6]["leaf_hash"] = merkle.leaf_hash(canonical_bytes(tampered["entries"][6]["entry"])).hex()
    report = check(tampered, trust)
    assert report.first_bad_seq == 6
    assert "batch 5..7: entry is not the leaf the batch signed" in report.summary()
    assert "inclusion proof does not lead to the checkpoint root" in report.summary()


def test_swapped_entries_fail(bundle: dict[str, Any], trust: identity.TrustStore) -> None:
    tampered = copy(bundle)
    entries = tampered["entries"]
    entries[2]["entry"], entries[3]["entry"] = entries[3]["entry"], entries[2]["entry"]
    entries[2]["leaf_hash"], entries[3]["leaf_hash"] = entries[3]["leaf_hash"], entries[2]["leaf_hash"]
    report = check(tampered, trust)
    assert report.first_bad_seq == 2
    assert {f.seq for f in report.failures} == {2, 3}


def test_an_entry_outside_every_signed_batch_fails(bundle: dict[str, Any], trust: identity.TrustStore) -> None:
    tampered = copy(bundle)
    del tampered["batches"][2]
    report = check(tampered, trust)
    assert report.first_bad_seq == 8
    assert "not covered by any signed batch" in report.summary()


def test_entries_appended_by_an_org_the_policy_forbids_fail(
    signers: dict[str, Identity], cosigners: list[Identity], trust: identity.TrustStore
) -> None:
    log = MemoryLog()
    log.append(signers["finance"], [sale(0)], at(1))
    log.append(signers["ops"], [sale(1), summary(1)], at(2))
    report = check(log.export(log.checkpoint(cosigners, at(3))), trust)
    assert report.first_bad_seq == 1
    assert "org 'ops' may not append 'reconciled_sale'" in report.summary()
    assert {f.seq for f in report.failures} == {1, 2}  # summaries are finance's too


def test_a_batch_signed_with_another_orgs_name_fails(bundle: dict[str, Any], trust: identity.TrustStore) -> None:
    tampered = copy(bundle)
    tampered["batches"][1]["org"] = "audit"
    report = check(tampered, trust)
    assert report.first_bad_seq == 5
    assert "belongs to 'finance'" in report.summary()


def test_revoked_and_expired_signers_fail(
    tmp_path: Path, auditor_trust_dir: Path, log: MemoryLog, signers: dict[str, Identity], cosigners: list[Identity]
) -> None:
    trust_dir = tmp_path / "trust"
    shutil.copytree(auditor_trust_dir, trust_dir)
    honest = log.export(log.checkpoint(cosigners, at(5)))
    serial = signers["finance"].cert.serial_number
    (trust_dir / "revoked.json").write_text(json.dumps({"org": "finance", "serials": [f"{serial:x}"]}))
    report = check(honest, identity.TrustStore.from_dir(trust_dir))
    assert report.first_bad_seq == 0
    assert "revoked" in report.summary()

    late = format_timestamp(signers["finance"].cert.not_valid_after_utc + timedelta(days=1))
    expired_log = MemoryLog()
    expired_log.append(signers["finance"], [sale(0)], late)
    report = check(
        expired_log.export(expired_log.checkpoint([signers["ledger"]], late)),
        identity.TrustStore.from_dir(auditor_trust_dir),
    )
    assert report.first_bad_seq == 0
    assert "not valid at" in report.summary()


def test_an_unknown_ca_is_refused(bundle: dict[str, Any], tmp_path: Path) -> None:
    identity.init_identities(tmp_path, orgs=["ledger", "finance"])
    report = check(bundle, identity.TrustStore.from_dir(identity.msp_dir(tmp_path)))
    assert report.first_bad_seq == 0
    assert "not issued by a trusted CA" in report.summary()


def test_a_checkpoint_must_be_cosigned_by_finance(
    log: MemoryLog, signers: dict[str, Identity], trust: identity.TrustStore
) -> None:
    for cosigners, missing in (
        ([signers["ledger"]], "'finance'"),
        ([signers["finance"], signers["audit"]], "'ledger'"),
    ):
        report = check(log.export(log.checkpoint(cosigners, at(5))), trust)
        assert f"checkpoint: no valid signature by {missing}" in report.summary()


def test_a_bad_checkpoint_signature_fails(bundle: dict[str, Any], trust: identity.TrustStore) -> None:
    tampered = copy(bundle)
    signature = tampered["checkpoint"]["signatures"][0]
    signature["signature"] = tampered["checkpoint"]["signatures"][1]["signature"]
    assert "signature of 'ledger': signature does not verify" in check(tampered, trust).summary()


def test_an_earlier_checkpoint_from_a_forked_log_fails(
    log: MemoryLog, signers: dict[str, Identity], cosigners: list[Identity], trust: identity.TrustStore
) -> None:
    fork = MemoryLog()
    fork.append(signers["finance"], [sale(n) for n in range(4)] + [sale(99)], at(1))
    forked = fork.checkpoint(cosigners, at(2))
    bundle = log.export(log.checkpoint(cosigners, at(5)))
    bundle["earlier"] = {
        "checkpoint": forked,
        "consistency_proof": [h.hex() for h in merkle.consistency_proof(5, 13, log.nodes.get_node)],
    }
    report = check(bundle, trust)
    assert "is not consistent with earlier size 5" in report.summary()
    assert report.first_bad_seq is None


@pytest.mark.parametrize(
    "content", [b"", b"not json", b"\xff\xfe", b"[]", b'{"format": "omnistock-ledger-bundle/1"}', b'{"a":1,"a":1}']
)
def test_unreadable_bundles_are_reported_not_raised(content: bytes, tmp_path: Path, auditor_trust_dir: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(content)
    assert not verify_bundle_file(path, auditor_trust_dir).ok
    assert not verify_bundle_file(tmp_path / "missing.json", auditor_trust_dir).ok
    assert not verify_bundle_file(path, tmp_path / "no-trust-dir").ok


def test_a_flipped_byte_anywhere_is_detected(bundle: dict[str, Any], auditor_trust_dir: Path, tmp_path: Path) -> None:
    raw = dump_bundle(bundle)
    trust = identity.TrustStore.from_dir(auditor_trust_dir)
    rng = random.Random(42)
    # One random position in every window of 10 bytes: every field, key, bracket, hash, signature and
    # certificate of the bundle gets hit, within the test-time budget.
    positions = [rng.randrange(start, min(start + 10, len(raw))) for start in range(0, len(raw), 10)]
    for position in positions:
        mutated = bytearray(raw)
        mutated[position] ^= rng.randrange(1, 256)
        report = verify_bundle_bytes(bytes(mutated), trust)
        assert not report.ok, f"flip at {position} ({raw[position - 20 : position + 20]!r}) went unnoticed"
    # The file entry point reports the same way (unparsable JSON included) and never raises.
    path = tmp_path / "bundle.json"
    for position in rng.sample(range(len(raw)), 40):
        mutated = bytearray(raw)
        mutated[position] ^= 0xFF
        path.write_bytes(mutated)
        assert not verify_bundle_file(path, auditor_trust_dir).ok
