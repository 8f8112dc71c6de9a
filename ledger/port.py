"""The ledger port: what every backend (embedded Postgres, Hyperledger Fabric: ledger/fabric/) offers.

Shapes returned are the JSON of ../shared/CONTRACT.md (Ledger), so the HTTP layer renders them as
they are and a Fabric backend can be swapped in without touching routes or use cases:

    checkpoint  {"tree_size", "root_hash": hex, "timestamp", "signatures": [{org, cert_pem, signature}]}
    entry       {"seq", "entry": {...}, "leaf_hash": hex, "inclusion_proof": [hex], "checkpoint": checkpoint}
    consistency {"first", "second", "first_root": hex, "second_root": hex, "proof": [hex],
                 "checkpoint": the signed checkpoint of size `second`, if one exists}
    export      a bundle that ledger.verify checks offline (format in ledger/verify.py)

Entries are JSON objects with a "kind" (ledger.policy.ENTRY_KINDS). Each organisation signs where it
runs: an append carries the submitter's own signature (ledger.signing.Submission, made with
ledger.signing.sign_submission before any seq is known) and the backend never signs for anyone. It
verifies the signature over exactly these entries against the trust store (CA, validity at the
signed time, revocation), checks the policy for the signer's org and every kind
(ledger.policy.PermissionDenied), refuses a timestamp too far from its clock or older than the log's
latest batch, and only then stores it. Checkpoints are signed by the backend's ledger identity, when it
holds one (the ledger service does; finance's in-process port does not); co-signatures are made by
their organisation elsewhere and stored through `cosign`, verified the same way. Reading policy (who
may see which kind) is the caller's business (ledger.service.use_cases), because a backend does not
know who is asking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ledger.signing import BadSignature, SignatureRefused, StaleSignature, Submission, TimestampRefused, UntrustedSigner
from ledger.verify import VerificationReport

__all__ = ["AlreadyAppended", "BadRange", "BadSignature", "CheckpointNotFound", "DuplicateEntryKey", "Entry",
           "EntryNotFound", "EntryVisitor", "Json", "Ledger", "NotCosigned", "Receipt", "SignatureRefused",
           "StaleSignature", "Submission", "TimestampRefused", "UntrustedSigner"]

Entry = Mapping[str, Any]
Json = dict[str, Any]


class EntryNotFound(LookupError):
    """No entry with that seq (yet)."""


class DuplicateEntryKey(ValueError):
    """An entry's (kind, entry_key) is already in the log with other content; `existing` has, per
    position in the append, the receipt of the entry the log holds."""

    def __init__(self, message: str, existing: dict[int, Receipt]) -> None:
        super().__init__(message)
        self.existing = existing


class AlreadyAppended(ValueError):
    """Some (not all) of the entries are in the log already with the same content (a retry after lost
    receipts): the signature covers all of them, so none is written. `existing` has, per position, the
    receipt the log holds; submit the others again, signed anew."""

    def __init__(self, message: str, existing: dict[int, Receipt]) -> None:
        super().__init__(message)
        self.existing = existing


class BadRange(ValueError):
    """A tree size or seq range the log cannot answer for (e.g. beyond its latest checkpoint)."""


class NotCosigned(BadRange):
    """No checkpoint signed by every organisation the policy requires covers the range yet."""


class CheckpointNotFound(LookupError):
    """No checkpoint of that tree size."""


@dataclass(frozen=True)
class Receipt:
    """What an append hands back for each entry: where it sits in the log and what the leaf is."""

    seq: int
    leaf_hash: str  # hex
    batch_id: int


@runtime_checkable
class Ledger(Protocol):
    async def append(self, entries: Sequence[Entry], submission: Submission) -> list[Receipt]:
        """Append entries in order as one batch signed by its submitter; all or nothing.

        Raises SignatureRefused (its subclasses say why) or ledger.policy.PermissionDenied and writes
        nothing unless `submission` is a valid signature over exactly `entries` by a trusted member of an
        org that may append every kind. An entry with an `entry_key` is in the log at most once per kind:
        appending entries that are all in the log already returns their receipts and writes nothing; a
        mix of stored and new ones raises AlreadyAppended; other content under a key already used raises
        DuplicateEntryKey; a key repeated inside one append is a ValueError."""
        ...

    async def entry(self, seq: int) -> Json:
        """An entry with its inclusion proof against the latest checkpoint (cut now if it predates it)."""
        ...

    async def find(self, *, entry_key: str | None = None, order_id: str | None = None,
                   limit: int = 50) -> list[tuple[int, str]]:
        """(seq, kind) of the entries with that entry_key, or the reconciled sales of that order id, in
        seq order (an auditor's lookup; each entry is then read, and proven, with `entry`)."""
        ...

    async def checkpoint(self) -> Json | None:
        """The latest signed checkpoint, None while the log has none."""
        ...

    async def cut_checkpoint(self) -> Json | None:
        """Sign a checkpoint of the current tree if it grew since the last one; return the latest.
        Only a backend holding the ledger identity cuts; any other returns the latest unchanged."""
        ...

    async def checkpoint_of_size(self, tree_size: int) -> Json:
        """The checkpoint of that size with all its signatures; CheckpointNotFound if there is none."""
        ...

    async def latest_cosigned(self, org: str) -> Json | None:
        """The latest checkpoint that carries a signature by `org` (unverified: the caller checks it)."""
        ...

    async def cosign(self, tree_size: int, signature: Mapping[str, str]) -> Json:
        """Store a co-signature {org, cert_pem, signature} over the checkpoint of that size, once per org;
        verified like an append (trust, policy.CHECKPOINT_COSIGNERS). Returns the checkpoint."""
        ...

    async def consistency(self, first: int, second: int | None = None) -> Json:
        """RFC 9162 consistency proof from tree size `first` to `second` (default: latest checkpoint)."""
        ...

    async def export(self, first: int, last: int, since: int | None = None) -> Json:
        """A verification bundle for seqs first..last, optionally proving consistency with checkpoint `since`."""
        ...

    async def audit(self, visit: EntryVisitor | None = None) -> VerificationReport:
        """Re-check the whole stored log against its signed checkpoints and batch signatures."""
        ...


class EntryVisitor(Protocol):
    """Called by audit for each entry it reads (e.g. the revenue audit sums reconciled sales)."""

    def __call__(self, seq: int, entry: Json) -> None: ...
