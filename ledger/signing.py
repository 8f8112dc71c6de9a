"""ECDSA P-256 / SHA-256 signatures over canonical statements.

Signatures are DER, written as standard base64 (with padding) in JSON. A signature never covers
loose bytes: it covers a *statement*, the canonical JSON (ledger.encoding) of an object whose "kind"
says what is being claimed, so a signature over a batch can never be replayed as a checkpoint.

Batch statement (the submitter's claim "I appended these leaves, in this order"):
    {"kind": "batch", "org": str, "first_seq": int, "last_seq": int,
     "batch_root": hex MTH of the leaf hashes of seqs first_seq..last_seq, "timestamp": RFC 3339}
Checkpoint statement (the ledger's claim, co-signed by finance):
    {"kind": "checkpoint", "tree_size": int, "root_hash": hex, "timestamp": RFC 3339}
"""

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ledger import merkle
from ledger.encoding import canonical_bytes
from ledger.identity import Identity

_ECDSA = ec.ECDSA(hashes.SHA256())


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, _ECDSA)).decode("ascii")


def verify(cert: x509.Certificate, data: bytes, signature: str) -> bool:
    """True only for a valid signature in canonical base64 by the certificate's P-256 key."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    try:
        der = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    # base64 has spare bits in its last character; insisting on the one canonical spelling means any
    # altered character of a stored signature is detected, not silently decoded to the same bytes.
    if base64.b64encode(der).decode("ascii") != signature:
        return False
    try:
        key.verify(der, data, _ECDSA)
    except InvalidSignature:
        return False
    return True


def batch_statement(org: str, first_seq: int, last_seq: int, batch_root: bytes, timestamp: str) -> bytes:
    return canonical_bytes(
        {
            "kind": "batch",
            "org": org,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "batch_root": batch_root.hex(),
            "timestamp": timestamp,
        }
    )


def checkpoint_statement(tree_size: int, root_hash: bytes, timestamp: str) -> bytes:
    return canonical_bytes(
        {"kind": "checkpoint", "tree_size": tree_size, "root_hash": root_hash.hex(), "timestamp": timestamp}
    )


def signature_record(identity: Identity, statement: bytes) -> dict[str, str]:
    """{"org", "cert_pem", "signature"}: one signature as stored and exported."""
    return {"org": identity.org, "cert_pem": identity.cert_pem, "signature": sign(identity.private_key, statement)}


def sign_batch(
    identity: Identity, first_seq: int, last_seq: int, leaf_hashes: Sequence[bytes], timestamp: str
) -> dict[str, Any]:
    """Sign one append batch: the seqs first_seq..last_seq whose leaf hashes are given, in order."""
    if len(leaf_hashes) != last_seq - first_seq + 1 or first_seq < 0:
        raise ValueError("a batch needs exactly one leaf hash per seq in first_seq..last_seq")
    batch_root = merkle.root(leaf_hashes)
    statement = batch_statement(identity.org, first_seq, last_seq, batch_root, timestamp)
    return {
        "first_seq": first_seq,
        "last_seq": last_seq,
        "timestamp": timestamp,
        "batch_root": batch_root.hex(),
        **signature_record(identity, statement),
    }


def sign_checkpoint(tree_size: int, root_hash: bytes, timestamp: str, signers: Sequence[Identity]) -> dict[str, Any]:
    """A checkpoint as served by GET /v1/ledger/checkpoint; signers: the ledger, then finance."""
    statement = checkpoint_statement(tree_size, root_hash, timestamp)
    return {
        "tree_size": tree_size,
        "root_hash": root_hash.hex(),
        "timestamp": timestamp,
        "signatures": [signature_record(signer, statement) for signer in signers],
    }


def cosign_checkpoint(checkpoint: dict[str, Any], signer: Identity) -> dict[str, Any]:
    """Add one more signature (e.g. finance's co-signature) to a checkpoint signed elsewhere."""
    statement = checkpoint_statement(
        checkpoint["tree_size"], bytes.fromhex(checkpoint["root_hash"]), checkpoint["timestamp"]
    )
    return {**checkpoint, "signatures": [*checkpoint["signatures"], signature_record(signer, statement)]}
