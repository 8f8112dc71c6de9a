"""ECDSA P-256 / SHA-256 signatures over canonical statements.

Signatures are DER, written as standard base64 (with padding) in JSON. A signature never covers
loose bytes: it covers a *statement*, the canonical JSON (ledger.encoding) of an object whose "kind"
says what is being claimed, so a signature over a batch can never be replayed as a checkpoint.

Submission statement (the submitter's claim "I append these entries, in this order"), signed where
the submitter runs, before the ledger assigns seqs, so it names no seqs:
    {"kind": "submission", "org": str, "batch_root": hex MTH of the entries' leaf hashes,
     "count": int, "timestamp": RFC 3339}
Batch statement (the form of batches appended before submitters signed for themselves: the backend
signed, knowing the seqs; such batches still verify, nothing new is signed this way):
    {"kind": "batch", "org": str, "first_seq": int, "last_seq": int,
     "batch_root": hex MTH of the leaf hashes of seqs first_seq..last_seq, "timestamp": RFC 3339}
Checkpoint statement (the ledger's claim, co-signed by finance):
    {"kind": "checkpoint", "tree_size": int, "root_hash": hex, "timestamp": RFC 3339}

A stored or exported batch says which statement its signature covers ("statement": "submission" or
"batch"); the statement's own "kind" is inside the signed bytes, so the label cannot be switched.
"""

import base64
import binascii
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning

from ledger import merkle
from ledger.encoding import canonical_bytes, format_timestamp, parse_timestamp
from ledger.identity import Identity, TrustStore, UntrustedCertificate

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


SUBMISSION = "submission"
LEGACY_BATCH = "batch"
STATEMENTS = (SUBMISSION, LEGACY_BATCH)


def submission_statement(org: str, batch_root: bytes, count: int, timestamp: str) -> bytes:
    return canonical_bytes(
        {"kind": SUBMISSION, "org": org, "batch_root": batch_root.hex(), "count": count, "timestamp": timestamp}
    )


def stored_batch_statement(statement: str, org: str, first_seq: int, last_seq: int, batch_root: bytes,
                           timestamp: str) -> bytes:
    """The bytes a stored batch's signature covers, by the statement form it names."""
    if statement == SUBMISSION:
        return submission_statement(org, batch_root, last_seq - first_seq + 1, timestamp)
    if statement == LEGACY_BATCH:
        return batch_statement(org, first_seq, last_seq, batch_root, timestamp)
    raise ValueError(f"unknown batch statement {statement!r}")


@dataclass(frozen=True)
class Submission:
    """A member's signature over entries it submits (what ledger.port.Ledger.append takes): strings
    only, so it crosses HTTP, a CLI file or a Fabric proposal unchanged."""

    org: str
    cert_pem: str
    timestamp: str  # RFC 3339 UTC, the exact text signed
    signature: str  # base64 DER over submission_statement(org, root of the entries' leaves, count, timestamp)

    def as_json(self) -> dict[str, str]:
        return {"org": self.org, "cert_pem": self.cert_pem, "timestamp": self.timestamp, "signature": self.signature}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Submission":
        return cls(str(value["org"]), str(value["cert_pem"]), str(value["timestamp"]), str(value["signature"]))


def entry_leaves(entries: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Leaf hashes of entries as the ledger will store them; ValueError if one has no canonical form."""
    return [merkle.leaf_hash(canonical_bytes(dict(entry))) for entry in entries]


def sign_submission(identity: Identity, entries: Sequence[Mapping[str, Any]],
                    timestamp: str | None = None) -> Submission:
    """The submitter's side (finance's service or CLI): sign entries before sending them to the ledger."""
    if not entries:
        raise ValueError("a submission needs at least one entry")
    stamp = timestamp or format_timestamp(datetime.now(UTC))
    statement = submission_statement(identity.org, merkle.root(entry_leaves(entries)), len(entries), stamp)
    return Submission(identity.org, identity.cert_pem, stamp, sign(identity.private_key, statement))


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


def checkpoint_signature(checkpoint: Mapping[str, Any], signer: Identity) -> dict[str, str]:
    """One signature {org, cert_pem, signature} over a checkpoint signed elsewhere (a co-signature)."""
    statement = checkpoint_statement(
        checkpoint["tree_size"], bytes.fromhex(checkpoint["root_hash"]), checkpoint["timestamp"]
    )
    return signature_record(signer, statement)


def cosign_checkpoint(checkpoint: dict[str, Any], signer: Identity) -> dict[str, Any]:
    """Add one more signature (e.g. finance's co-signature) to a checkpoint signed elsewhere."""
    statement = checkpoint_statement(
        checkpoint["tree_size"], bytes.fromhex(checkpoint["root_hash"]), checkpoint["timestamp"]
    )
    return {**checkpoint, "signatures": [*checkpoint["signatures"], signature_record(signer, statement)]}


# --- the receiving side: what a backend checks before it stores a signature -------------------


class SignatureRefused(ValueError):
    """A submission or co-signature a backend will not store; nothing was written."""


class BadSignature(SignatureRefused):
    """The signature does not verify over these entries (or this checkpoint) with the certificate given."""


class UntrustedSigner(SignatureRefused):
    """The certificate is not a trusted member of the org at the signed time (unknown CA, expired, revoked)."""


class TimestampRefused(SignatureRefused):
    """The signed timestamp is malformed or too far from the receiver's clock."""


class StaleSignature(SignatureRefused):
    """The signed timestamp is older than the log's latest batch: sign again (the log's times never go back)."""


def check_signature(trust: TrustStore, org: str, cert_pem: str, statement: bytes, signature: str,
                    at: datetime) -> None:
    """Raise UntrustedSigner or BadSignature unless `signature` over `statement` is by a member of `org`
    trusted at `at`: the rules of the offline verifier (ledger.verify), as exceptions."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
            if cert.public_bytes(serialization.Encoding.PEM).decode("ascii") != cert_pem:
                raise UntrustedSigner("certificate PEM is not in canonical form")
            trust.check_signer(cert, org, at)
    except (UntrustedCertificate, ValueError, CryptographyDeprecationWarning, UnicodeError) as exc:
        if isinstance(exc, UntrustedSigner):
            raise
        raise UntrustedSigner(f"untrusted certificate: {exc}") from None
    if not verify(cert, statement, signature):
        raise BadSignature(f"the signature of {org!r} does not verify over what was sent")


def check_submission(trust: TrustStore, submission: Submission, leaves: Sequence[bytes], now: datetime,
                     max_skew_s: float) -> bytes:
    """A submission over exactly these leaves, by a trusted member, dated within max_skew_s of `now`;
    returns the batch root it covers."""
    try:
        at = parse_timestamp(submission.timestamp)
    except ValueError as exc:
        raise TimestampRefused(f"submission timestamp: {exc}") from None
    skew = (at - now).total_seconds()
    if abs(skew) > max_skew_s:
        # Signed too long ago (a retry of an old body, say) is the submitter's cue to sign again, like a
        # batch overtaken by a later one; dated ahead of the clock is a broken clock.
        kind = StaleSignature if skew < 0 else TimestampRefused
        raise kind(f"submission signed at {submission.timestamp}, {abs(skew):.0f} s from the ledger's clock "
                   f"({format_timestamp(now)}); at most {max_skew_s:.0f} s allowed: sign again")
    batch_root = merkle.root(list(leaves))
    statement = submission_statement(submission.org, batch_root, len(leaves), submission.timestamp)
    check_signature(trust, submission.org, submission.cert_pem, statement, submission.signature, at)
    return batch_root
