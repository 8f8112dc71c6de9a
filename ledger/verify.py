"""Offline verifier of a ledger export bundle: trusts nothing but the certificates in --trust DIR.

Bundle (UTF-8 JSON; hashes lowercase hex, signatures base64 DER, times RFC 3339 as in ledger.encoding):

    {"format": "omnistock-ledger-bundle/1",
     "checkpoint": {"tree_size": n, "root_hash": hex, "timestamp": t,
                    "signatures": [{"org": "ledger"|"finance"|..., "cert_pem": PEM, "signature": b64}]},
     "entries": [{"seq": i, "entry": {...JSON object with "kind"...}, "leaf_hash": hex,
                  "inclusion_proof": [hex, ...]}],                        # ascending seq
     "batches": [{"org", "first_seq", "last_seq", "timestamp", "batch_root": hex,
                  "cert_pem", "signature", "leaf_hashes"?: [hex, ...]}],  # ascending, disjoint
     "earlier"?: {"checkpoint": {...as above...}, "consistency_proof": [hex, ...]}}

What is checked, and why it is enough:
1. Each entry's leaf hash is recomputed as SHA-256(0x00 || canonical bytes of the entry) and its
   RFC 9162 inclusion proof must lead to the checkpoint's root at index seq: the entry is in the
   log, unaltered, at that position.
2. The checkpoint statement must be signed by `ledger` and co-signed by `finance`, each with a
   certificate chaining to that org's CA in DIR, valid at the checkpoint's time and not revoked.
3. Every entry must lie in a signed batch. A batch's root is the RFC 9162 root of the leaf hashes of
   its whole seq range: taken from "leaf_hashes" when given (so a bundle may leave out entries its
   reader may not see), else every seq of the range must be in the bundle. Entries present must match
   those leaves. The batch signer's certificate is checked like a checkpoint signer's (at the batch
   time, which may not be later than the checkpoint's) and its org must be allowed by ledger.policy
   to append each entry's kind.
4. With "earlier", that checkpoint's signatures are checked too, and the RFC 9162 consistency proof
   must show the later tree extends it: nothing recorded then was changed or removed since.

Bundles of the Fabric backend (ledger.fabric) have the same shape. Their checkpoints are signed by
endorsements instead of by `ledger` and `finance`: each signature carries
    "endorsement": {"endorser": b64 SerializedIdentity, "proposal_response_payload": b64}
and its signature covers proposal_response_payload || endorser (what a Fabric peer signs). It counts
only if the endorser is the certificate given, a peer's (OU=peer) issued by the CA of its org (the O=
of that CA: the organisation's Fabric CA in DIR, e.g. its msp/cacerts/ca.<domain>-cert.pem), and the
endorsed chaincode response is exactly the checkpoint statement. A checkpoint whose signatures are
endorsements needs one from each org in `endorsers` (default ledger.policy.DEFAULT_CHECKPOINT_ENDORSERS:
the retailer's and the audit firm's peers, as the endorsement policy); an endorsement by an org neither
required nor in DIR is left unjudged; endorsements and ledger signatures on one checkpoint are malformed.
Any malformed field, unknown key, or non-canonical hex/base64/PEM/time spelling is a failure, so
every byte of a bundle matters. Nothing here raises on bad data: it ends up in the report.
"""

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from ledger import merkle, policy, signing
from ledger.encoding import canonical_bytes, parse_timestamp
from ledger.identity import TrustStore, UntrustedCertificate

BUNDLE_FORMAT = "omnistock-ledger-bundle/1"
CHECKPOINT_SIGNERS = policy.CHECKPOINT_SIGNERS  # a bundle's checkpoints need every one of them
_HEX32 = re.compile(r"[0-9a-f]{64}")


class Malformed(ValueError):
    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class Failure:
    message: str
    seq: int | None = None


@dataclass
class VerificationReport:
    failures: list[Failure] = field(default_factory=list)
    tree_size: int | None = None
    entries_checked: int = 0
    batches_checked: int = 0
    checkpoint_signers: list[str] = field(default_factory=list)  # valid signers of the (latest) checkpoint
    required_signers: list[str] = field(default_factory=lambda: list(CHECKPOINT_SIGNERS))
    cosigned_size: int | None = None  # audit: the latest checkpoint every required org signed

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def first_bad_seq(self) -> int | None:
        return min((f.seq for f in self.failures if f.seq is not None), default=None)

    def fail(self, message: str, seq: int | None = None) -> None:
        self.failures.append(Failure(message, seq))

    def summary(self) -> str:
        signers = (f"; checkpoint signed by {', '.join(self.checkpoint_signers) or 'nobody'}"
                   f" (policy requires {', '.join(self.required_signers)}),"
                   f" latest signed by all: size {self.cosigned_size}")
        if self.ok:
            return (f"OK: {self.entries_checked} entries, {self.batches_checked} batches, tree size {self.tree_size}"
                    + signers)
        lines = [f"FAILED: {len(self.failures)} problem(s), first bad seq: {self.first_bad_seq}"]
        lines += [f"  seq {f.seq}: {f.message}" if f.seq is not None else f"  {f.message}" for f in self.failures]
        return "\n".join(lines)


def verify_bundle_file(path: Path, trust_dir: Path, endorsers: Sequence[str] | None = None) -> VerificationReport:
    """What `omnistock ledger verify BUNDLE --trust DIR` runs; exit 0 only if report.ok."""
    try:
        trust = TrustStore.from_dir(Path(trust_dir))
        raw = Path(path).read_bytes()
    except (OSError, ValueError) as exc:
        report = VerificationReport()
        report.fail(f"cannot read bundle or trust directory: {exc}")
        return report
    return verify_bundle_bytes(raw, trust, endorsers)


def verify_bundle_bytes(raw: bytes, trust: TrustStore, endorsers: Sequence[str] | None = None) -> VerificationReport:
    try:
        bundle = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:  # includes invalid UTF-8
        report = VerificationReport()
        report.fail(f"bundle is not valid JSON: {exc}")
        return report
    return verify_bundle(bundle, trust, endorsers=endorsers)


def verify_bundle(bundle: Any, trust: TrustStore, report: VerificationReport | None = None,
                  endorsers: Sequence[str] | None = None) -> VerificationReport:
    if report is None:
        report = VerificationReport()
    try:
        _verify(bundle, trust, report, tuple(endorsers or policy.DEFAULT_CHECKPOINT_ENDORSERS))
    except Malformed as exc:
        report.fail(f"malformed bundle: {exc}", exc.seq)
    except Exception as exc:  # a verifier fails closed: any surprise is a failure, never a pass
        report.fail(f"bundle could not be checked: {type(exc).__name__}: {exc}")
    return report


def _verify(bundle: Any, trust: TrustStore, report: VerificationReport, endorsers: tuple[str, ...]) -> None:
    top = _fields(bundle, "bundle", {"format", "checkpoint", "entries", "batches"}, {"earlier"})
    if top["format"] != BUNDLE_FORMAT:
        raise Malformed(f"unknown format {top['format']!r}, expected {BUNDLE_FORMAT!r}")
    size, root, when = _checkpoint(top["checkpoint"], "checkpoint", trust, report, endorsers)
    report.tree_size = size
    report.cosigned_size = size if report.ok else None
    leaves, kinds = _entries(top["entries"], size, root, report)
    covered = _batches(top["batches"], size, when, leaves, kinds, trust, report)
    for seq in sorted(leaves.keys() - covered):
        report.fail("entry is not covered by any signed batch", seq)
    if "earlier" in top:
        earlier = _fields(top["earlier"], "earlier", {"checkpoint", "consistency_proof"})
        signers = report.checkpoint_signers
        old_size, old_root, old_when = _checkpoint(earlier["checkpoint"], "earlier checkpoint", trust, report,
                                                   endorsers)
        report.checkpoint_signers = signers
        proof = _hexes(earlier["consistency_proof"])
        if old_when > when or not merkle.verify_consistency(old_size, size, proof, old_root, root):
            report.fail(f"checkpoint of size {size} is not consistent with earlier size {old_size}")


def check_checkpoint(value: Any, label: str, trust: TrustStore, report: VerificationReport,
                     endorsers: tuple[str, ...] = policy.DEFAULT_CHECKPOINT_ENDORSERS) -> None:
    """One checkpoint's signatures, by the bundle rules (an audit's walk over stored checkpoints);
    problems go to the report."""
    try:
        _checkpoint(value, label, trust, report, endorsers)
    except Malformed as exc:
        report.fail(f"{label}: {exc}")


def _checkpoint(value: Any, label: str, trust: TrustStore, report: VerificationReport,
                endorsers: tuple[str, ...] = policy.DEFAULT_CHECKPOINT_ENDORSERS,
                required: tuple[str, ...] = CHECKPOINT_SIGNERS) -> tuple[int, bytes, datetime]:
    """Check every signature on a checkpoint; each org it requires (CHECKPOINT_SIGNERS, or `endorsers`
    for a checkpoint endorsed on Fabric) must be among the valid ones. The valid signers go to
    report.checkpoint_signers."""
    cp = _fields(value, label, {"tree_size", "root_hash", "timestamp", "signatures"})
    size, root = _int(cp["tree_size"], "tree_size"), _hex(cp["root_hash"], "root_hash")
    when = _time(cp["timestamp"])
    statement = signing.checkpoint_statement(size, root, cp["timestamp"])
    items = [_fields(item, "signature", {"org", "cert_pem", "signature"}, {"endorsement"})
             for item in _list(cp["signatures"], "signatures")]
    endorsed = {"endorsement" in sig for sig in items}
    if len(endorsed) > 1:
        raise Malformed(f"{label}: signatures mix Fabric endorsements and ledger signatures")
    if endorsed == {True}:
        required = endorsers
        report.required_signers = list(required)
    signed_by: set[str] = set()
    for sig in items:
        if "endorsement" in sig and sig["org"] not in required and sig["org"] not in trust.cas:
            continue  # an endorser the auditor neither requires nor trusts: not its to judge
        problem = _signer_problem(sig, _signed_bytes(sig, statement), when, trust)
        if problem:
            report.fail(f"{label}: signature of {sig['org']!r}: {problem}")
        else:
            signed_by.add(sig["org"])
    for org in required:
        if org not in signed_by:
            report.fail(f"{label}: no valid signature by {org!r}")
    report.checkpoint_signers = sorted(signed_by)
    return size, root, when


def _entries(value: Any, size: int, root: bytes, report: VerificationReport) -> tuple[dict[int, bytes], dict]:
    """Check each entry's leaf and inclusion proof; return its recomputed leaf hash and kind by seq."""
    leaves: dict[int, bytes] = {}
    kinds: dict[int, Any] = {}
    previous = -1
    for item in _list(value, "entries"):
        e = _fields(item, "entry", {"seq", "entry", "leaf_hash", "inclusion_proof"})
        seq = _int(e["seq"], "seq")
        if not previous < seq < size:
            raise Malformed(f"entry seq {seq} out of order or beyond tree size {size}", seq)
        previous = seq
        if not isinstance(e["entry"], dict):
            raise Malformed("entry must be a JSON object", seq)
        try:
            leaf = merkle.leaf_hash(canonical_bytes(e["entry"]))
        except ValueError as exc:
            raise Malformed(f"entry has no canonical encoding: {exc}", seq) from exc
        leaves[seq] = leaf
        kinds[seq] = e["entry"].get("kind")
        report.entries_checked += 1
        if leaf != _hex(e["leaf_hash"], "leaf_hash"):
            report.fail("leaf_hash does not match the entry's canonical bytes (entry altered?)", seq)
        if not merkle.verify_inclusion(leaf, seq, size, _hexes(e["inclusion_proof"]), root):
            report.fail("inclusion proof does not lead to the checkpoint root", seq)
    return leaves, kinds


def _batches(
    value: Any,
    size: int,
    checkpoint_time: datetime,
    leaves: dict[int, bytes],
    kinds: dict[int, Any],
    trust: TrustStore,
    report: VerificationReport,
) -> set[int]:
    """Check every batch; return the seqs covered by a batch (valid or not: failures are reported)."""
    covered: set[int] = set()
    previous_last = -1
    for item in _list(value, "batches"):
        b = _fields(
            item,
            "batch",
            {"org", "first_seq", "last_seq", "timestamp", "batch_root", "cert_pem", "signature"},
            {"leaf_hashes", "statement"},
        )
        first, last = _int(b["first_seq"], "first_seq"), _int(b["last_seq"], "last_seq")
        if not previous_last < first <= last < size:
            raise Malformed(f"batch {first}..{last} overlaps another, is reversed, or lies beyond the tree", first)
        previous_last = last
        if "leaf_hashes" in b:
            hashes = _hexes(b["leaf_hashes"])
            if len(hashes) != last - first + 1:
                raise Malformed(f"batch {first}..{last} lists {len(hashes)} leaf hashes", first)
        elif all(s in leaves for s in range(first, last + 1)):
            hashes = [leaves[s] for s in range(first, last + 1)]
        else:
            report.fail(f"batch {first}..{last} has neither leaf_hashes nor all of its entries", first)
            continue
        report.batches_checked += 1
        covered.update(range(first, last + 1))
        # A batch whose leaves no longer match is reported at the first entry already found bad inside
        # it, if any, so first_bad_seq names the altered entry rather than the start of its batch.
        located = min((f.seq for f in report.failures if f.seq is not None and first <= f.seq <= last), default=first)
        for message, seq in _batch_problems(b, first, hashes, checkpoint_time, leaves, kinds, trust, located):
            report.fail(f"batch {first}..{last}: {message}", seq)
    return covered


def _batch_problems(
    b: dict[str, Any],
    first: int,
    hashes: list[bytes],
    checkpoint_time: datetime,
    leaves: dict[int, bytes],
    kinds: dict[int, Any],
    trust: TrustStore,
    located: int,
) -> list[tuple[str, int]]:
    """What is wrong with one batch, each problem with the first seq it leaves unproven."""
    seqs = range(first, first + len(hashes))
    problems = [
        ("entry is not the leaf the batch signed", s)
        for s, h in zip(seqs, hashes, strict=True)
        if s in leaves and leaves[s] != h
    ]
    problems += [
        (f"org {b['org']!r} may not append {kinds[s]!r}", s)
        for s in seqs
        if s in kinds and not (isinstance(kinds[s], str) and policy.may_append(b["org"], kinds[s]))
    ]
    batch_root = _hex(b["batch_root"], "batch_root")  # what the signature covers, checked below
    if merkle.root(hashes) != batch_root:
        problems.append(("batch_root does not match the batch's leaves", located))
    when = _time(b["timestamp"])
    if when > checkpoint_time:
        problems.append(("batch is dated after the checkpoint that includes it", first))
    # A bad signature or signer leaves the whole batch unproven, hence its first seq. A batch names the
    # statement its submitter signed (absent: the older "batch" form, which names seqs).
    form = b.get("statement", signing.LEGACY_BATCH)
    if form not in signing.STATEMENTS:
        raise Malformed(f"batch {first}..{seqs[-1]}: unknown statement {form!r}", first)
    statement = signing.stored_batch_statement(form, b["org"], first, seqs[-1], batch_root, b["timestamp"])
    signer_problem = _signer_problem(b, statement, when, trust)
    if signer_problem:
        problems.append((signer_problem, first))
    return problems


def _signed_bytes(sig: dict[str, Any], statement: bytes) -> bytes | str:
    """What a checkpoint signature covers: the statement, or for a Fabric endorsement the endorsed
    payload and endorser (after checking they endorse this statement); a string says why not."""
    if "endorsement" not in sig:
        return statement
    from ledger.fabric.protocol import endorsed_bytes  # protobufs only for bundles that need them

    endorsement = _fields(sig["endorsement"], "endorsement", {"endorser", "proposal_response_payload"})
    if not all(isinstance(v, str) for v in endorsement.values()) or not isinstance(sig["cert_pem"], str):
        return "endorsement fields must be strings"
    try:
        return endorsed_bytes(endorsement, sig["cert_pem"], statement)
    except ValueError as exc:
        return str(exc)


def _signer_problem(sig: dict[str, Any], statement: bytes | str, when: datetime, trust: TrustStore) -> str | None:
    """None if `sig` is a valid signature over `statement` by a trusted member of sig["org"]."""
    pem = sig["cert_pem"]
    if not isinstance(pem, str) or not isinstance(sig["org"], str) or not isinstance(sig["signature"], str):
        return "org, cert_pem and signature must be strings"
    if isinstance(statement, str):  # the reason the signed bytes could not be made
        return statement
    try:
        with warnings.catch_warnings():
            # cryptography only warns about some malformed certificates (e.g. a negative serial);
            # for a verifier a malformed certificate is simply untrusted.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            if cert.public_bytes(serialization.Encoding.PEM).decode("ascii") != pem:
                return "certificate PEM is not in canonical form"
            if "endorsement" in sig:
                trust.check_endorser(cert, sig["org"], when)
            else:
                trust.check_signer(cert, sig["org"], when)
    except (UntrustedCertificate, ValueError, CryptographyDeprecationWarning) as exc:
        return f"untrusted certificate: {exc}"
    if not signing.verify(cert, statement, sig["signature"]):
        return "signature does not verify"
    return None


def _fields(value: Any, label: str, required: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise Malformed(f"{label} must be an object")
    keys = set(value)
    if not required <= keys <= required | optional:
        raise Malformed(f"{label} has keys {sorted(keys)}, expected {sorted(required)} (+ {sorted(optional)})")
    return value


def _list(value: Any, label: str) -> list:
    if not isinstance(value, list):
        raise Malformed(f"{label} must be a list")
    return value


def _int(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Malformed(f"{label} must be a non-negative integer")
    return value


def _hex(value: Any, label: str) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise Malformed(f"{label} must be 64 lowercase hex digits")
    return bytes.fromhex(value)


def _hexes(value: Any) -> list[bytes]:
    return [_hex(item, "proof hash") for item in _list(value, "hash list")]


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise Malformed("timestamp must be a string")
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise Malformed(str(exc)) from exc


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result
