"""Build export bundles in the format ledger.verify documents (the writer side of that contract).

A backend's export gathers, for a seq range: the latest signed checkpoint, each entry with its
inclusion proof against that checkpoint, every signed batch overlapping the range (with its leaf
hashes, so batches that straddle the range or hold entries the reader may not see still verify),
and optionally an earlier checkpoint with a consistency proof.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from ledger import merkle
from ledger.encoding import canonical_bytes
from ledger.verify import BUNDLE_FORMAT


def entry_record(seq: int, entry: Mapping[str, Any], inclusion_proof: Sequence[bytes]) -> dict[str, Any]:
    return {
        "seq": seq,
        "entry": dict(entry),
        "leaf_hash": merkle.leaf_hash(canonical_bytes(entry)).hex(),
        "inclusion_proof": [h.hex() for h in inclusion_proof],
    }


def batch_record(signed_batch: Mapping[str, Any], leaf_hashes: Sequence[bytes] | None = None) -> dict[str, Any]:
    """A batch as a backend stored it, plus its leaf hashes. `statement` names what the signature covers
    (ledger.signing: "submission", or "batch" for batches signed before submitters signed their own)."""
    keys = ("org", "first_seq", "last_seq", "timestamp", "batch_root", "cert_pem", "signature")
    record = {key: signed_batch[key] for key in keys}
    if "statement" in signed_batch:
        record["statement"] = signed_batch["statement"]
    if leaf_hashes is not None:
        record["leaf_hashes"] = [h.hex() for h in leaf_hashes]
    return record


def make_bundle(
    checkpoint: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    batches: Sequence[Mapping[str, Any]],
    earlier_checkpoint: Mapping[str, Any] | None = None,
    consistency_proof: Sequence[bytes] = (),
) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "checkpoint": dict(checkpoint),
        "entries": list(entries),
        "batches": list(batches),
    }
    if earlier_checkpoint is not None:
        bundle["earlier"] = {
            "checkpoint": dict(earlier_checkpoint),
            "consistency_proof": [h.hex() for h in consistency_proof],
        }
    return bundle


def dump_bundle(bundle: Mapping[str, Any]) -> bytes:
    """Compact canonical JSON: no insignificant bytes, so every byte of the file is checked."""
    return canonical_bytes(bundle)
