"""The ledger port: what every backend (embedded Postgres now, Hyperledger Fabric later) offers.

Shapes returned are the JSON of ../shared/CONTRACT.md (Ledger), so the HTTP layer renders them as
they are and a Fabric backend can be swapped in without touching routes or use cases:

    checkpoint  {"tree_size", "root_hash": hex, "timestamp", "signatures": [{org, cert_pem, signature}]}
    entry       {"seq", "entry": {...}, "leaf_hash": hex, "inclusion_proof": [hex], "checkpoint": checkpoint}
    consistency {"first", "second", "first_root": hex, "second_root": hex, "proof": [hex],
                 "checkpoint": the signed checkpoint of size `second`, if one exists}
    export      a bundle that ledger.verify checks offline (format in ledger/verify.py)

Entries are JSON objects with a "kind" (ledger.policy.ENTRY_KINDS). Appending checks the policy
(may `identity.org` append this kind?) and raises ledger.policy.PermissionDenied; reading policy
(who may see which kind) is the caller's business (ledger.service.use_cases), because a backend does
not know who is asking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ledger.identity import Identity
from ledger.verify import VerificationReport

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


class BadRange(ValueError):
    """A tree size or seq range the log cannot answer for (e.g. beyond its latest checkpoint)."""


@dataclass(frozen=True)
class Receipt:
    """What an append hands back for each entry: where it sits in the log and what the leaf is."""

    seq: int
    leaf_hash: str  # hex
    batch_id: int


@runtime_checkable
class Ledger(Protocol):
    async def append(self, entries: Sequence[Entry], identity: Identity) -> list[Receipt]:
        """Append entries in order as one signed batch; all or nothing.

        An entry with an `entry_key` is in the log at most once per kind: appending the same entry again
        returns its existing receipt (and an append of nothing but such entries writes no batch);
        appending other content under a key already used raises DuplicateEntryKey."""
        ...

    async def entry(self, seq: int) -> Json:
        """An entry with its inclusion proof against the latest checkpoint (cut now if it predates it)."""
        ...

    async def checkpoint(self) -> Json | None:
        """The latest signed checkpoint, None while the log has none."""
        ...

    async def cut_checkpoint(self) -> Json | None:
        """Sign a checkpoint of the current tree if it grew since the last one; return the latest."""
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
