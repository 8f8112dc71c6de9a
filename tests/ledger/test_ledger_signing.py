import base64
from pathlib import Path

from ledger import identity, merkle, signing


def test_signatures_verify_only_for_the_signed_bytes_and_key(data_dir: Path) -> None:
    finance = identity.load_identity(data_dir, "finance")
    ops = identity.load_identity(data_dir, "ops")
    signature = signing.sign(finance.private_key, b"statement")
    assert signing.verify(finance.cert, b"statement", signature)
    assert not signing.verify(finance.cert, b"statemenT", signature)
    assert not signing.verify(ops.cert, b"statement", signature)


def test_signatures_must_be_canonical_base64(data_dir: Path) -> None:
    finance = identity.load_identity(data_dir, "finance")
    # ECDSA signatures are randomised; take one whose URL-safe, unpadded spelling really differs from the
    # standard one (a signature with no '+', '/' or padding is spelt the same both ways).
    while True:
        signature = signing.sign(finance.private_key, b"x")
        der = base64.b64decode(signature)
        urlsafe = base64.urlsafe_b64encode(der).decode().rstrip("=")
        if urlsafe != signature:
            break
    assert not signing.verify(finance.cert, b"x", base64.b64encode(der).decode() + "\n")
    assert not signing.verify(finance.cert, b"x", urlsafe)
    assert not signing.verify(finance.cert, b"x", "not base64!")


def test_batch_and_checkpoint_statements_are_canonical_json_with_a_kind() -> None:
    root = bytes(range(32))
    assert signing.batch_statement("finance", 3, 9, root, "2024-05-01T00:00:00.000000Z") == (
        b'{"batch_root":"' + root.hex().encode() + b'","first_seq":3,"kind":"batch","last_seq":9,'
        b'"org":"finance","timestamp":"2024-05-01T00:00:00.000000Z"}'
    )
    assert signing.checkpoint_statement(10, root, "2024-05-01T00:00:00.000000Z") == (
        b'{"kind":"checkpoint","root_hash":"' + root.hex().encode() + b'",'
        b'"timestamp":"2024-05-01T00:00:00.000000Z","tree_size":10}'
    )


def test_a_signed_batch_covers_the_merkle_root_of_its_leaves(data_dir: Path) -> None:
    finance = identity.load_identity(data_dir, "finance")
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(5)]
    batch = signing.sign_batch(finance, 10, 14, leaves, "2024-05-01T00:00:00.000000Z")
    statement = signing.batch_statement("finance", 10, 14, merkle.root(leaves), batch["timestamp"])
    assert batch["batch_root"] == merkle.root(leaves).hex()
    assert signing.verify(finance.cert, statement, batch["signature"])


def test_a_checkpoint_carries_one_signature_per_signer(data_dir: Path) -> None:
    signers = [identity.load_identity(data_dir, org) for org in ("ledger", "finance")]
    checkpoint = signing.sign_checkpoint(3, bytes(32), "2024-05-01T00:00:00.000000Z", signers)
    statement = signing.checkpoint_statement(3, bytes(32), checkpoint["timestamp"])
    assert [s["org"] for s in checkpoint["signatures"]] == ["ledger", "finance"]
    for signer, record in zip(signers, checkpoint["signatures"], strict=True):
        assert record["cert_pem"] == signer.cert_pem
        assert signing.verify(signer.cert, statement, record["signature"])


def test_finance_can_cosign_a_checkpoint_the_ledger_signed(data_dir: Path) -> None:
    ledger_id, finance = (identity.load_identity(data_dir, org) for org in ("ledger", "finance"))
    checkpoint = signing.sign_checkpoint(3, bytes(32), "2024-05-01T00:00:00.000000Z", [ledger_id])
    cosigned = signing.cosign_checkpoint(checkpoint, finance)
    statement = signing.checkpoint_statement(3, bytes(32), checkpoint["timestamp"])
    assert [s["org"] for s in cosigned["signatures"]] == ["ledger", "finance"]
    assert signing.verify(finance.cert, statement, cosigned["signatures"][1]["signature"])
    assert len(checkpoint["signatures"]) == 1  # the original is left as it was


def test_a_submission_statement_names_no_seqs_and_is_never_a_batch_statement() -> None:
    root = bytes(range(32))
    assert signing.submission_statement("finance", root, 3, "2024-05-01T00:00:00.000000Z") == (
        b'{"batch_root":"' + root.hex().encode() + b'","count":3,"kind":"submission","org":"finance",'
        b'"timestamp":"2024-05-01T00:00:00.000000Z"}'
    )
    assert signing.stored_batch_statement("submission", "finance", 7, 9, root, "t") == \
        signing.submission_statement("finance", root, 3, "t")
    assert signing.stored_batch_statement("batch", "finance", 7, 9, root, "t") == \
        signing.batch_statement("finance", 7, 9, root, "t")


def test_a_submission_verifies_only_over_the_entries_it_signed(data_dir: Path, trust: identity.TrustStore) -> None:
    from datetime import UTC, datetime

    finance = identity.load_identity(data_dir, "finance")
    entries = [{"kind": "reconciled_sale", "n": 1}, {"kind": "reconciled_sale", "n": 2}]
    # (The session's identities were issued on 2024-01-01, valid for a year.)
    submission = signing.sign_submission(finance, entries, "2024-06-01T00:00:00.000000Z")
    now = datetime(2024, 6, 1, 0, 0, 30, tzinfo=UTC)
    assert signing.check_submission(trust, submission, signing.entry_leaves(entries), now, 60) == \
        merkle.root(signing.entry_leaves(entries))
    for other in (entries[::-1], entries[:1], [*entries, {"kind": "reconciled_sale", "n": 3}]):
        try:
            signing.check_submission(trust, submission, signing.entry_leaves(other), now, 60)
        except signing.BadSignature:
            continue
        raise AssertionError(f"accepted a signature over other entries: {other}")
