"""`omnistock ledger audit`: re-check the stored log against its signed checkpoints and batches.

Trusts only the certificates in OMNISTOCK_DATA_DIR/ledger/msp, never the stored hashes. In one
repeatable-read snapshot, chunk by chunk of 2^16 seqs:

1. every entry's leaf hash is recomputed from its stored canonical bytes and must equal the row's
   leaf_hash and the stored level-0 node at its seq (a changed, moved or inserted row disagrees with
   one of them at exactly its own seq); its `kind` column must be the kind inside the bytes;
   missing seqs are reported;
2. the chunk's tree is rebuilt level by level and compared with the stored node hashes (what proofs
   are served from); only a node whose children agree is reported, so one bad leaf is one failure;
3. every batch's RFC 9162 root over the recomputed leaves must equal the root its submitter signed,
   the signature must verify with a member certificate trusted at the batch's time, and the signer's
   organisation must be allowed to append each entry's kind (ledger.policy);
4. every checkpoint's signatures are checked exactly as the offline verifier does, and its root must
   be the root of the recomputed tree at its size. The ledger's signature is required on each; a
   co-signature (finance's) is required only where present: finance co-signs the newest checkpoint
   every few seconds, not each one. The report names the latest checkpoint's signers and the
   latest checkpoint signed by every organisation the policy requires (cosigned_size); entries beyond
   it are vouched for by their submitters and the ledger, not yet by finance.

The report is the verifier's VerificationReport; first_bad_seq names the earliest bad entry.
Costs: two SHA-256 per entry, one ECDSA verify per batch and per checkpoint signature; the database
sends each chunk's node hashes as one string per level.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger import merkle, policy, signing
from ledger import verify as verifier
from ledger.identity import TrustStore
from ledger.port import EntryVisitor
from ledger.postgres import repository as repo
from ledger.verify import VerificationReport
from shared.db import Pool

CHUNK_LEVEL = 16
CHUNK = 1 << CHUNK_LEVEL
MAX_FAILURES = 100
_ZERO = bytes(32)


def mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 root of leaf hashes, level by level: pairing left to right and carrying an odd last
    node up unchanged builds exactly the tree that "split at the largest power of two" builds."""
    if not hashes:
        return merkle.EMPTY_ROOT
    level = hashes
    while len(level) > 1:
        paired = [merkle.node_hash(a, b) for a, b in zip(level[0::2], level[1::2], strict=False)]
        level = paired + [level[-1]] if len(level) & 1 else paired
    return level[0]


def _fold(parts: list[bytes]) -> bytes:
    result = parts[-1]
    for left in reversed(parts[:-1]):
        result = merkle.node_hash(left, result)
    return result


@dataclass
class _Batch:
    row: Any
    leaves: list[bytes] = field(default_factory=list)

    @property
    def first(self) -> int:
        return int(self.row["first_seq"])

    @property
    def last(self) -> int:
        return int(self.row["last_seq"])


class _Auditor:
    def __init__(self, report: VerificationReport, trust: TrustStore, batches: list[Any],
                 upper: dict[tuple[int, int], bytes], visit: EntryVisitor | None) -> None:
        self.report, self.trust, self.upper, self.visit = report, trust, upper, visit
        self.batch_list = [_Batch(b) for b in batches]
        self.position = 0  # self.batch_list[self.position] is the batch being read
        self.ended: list[_Batch] = []  # batches whose entries are all read, checked after the chunk's tree
        self.coarse = merkle.Frontier()  # roots of complete chunks, as leaves of a coarser tree
        self.suppressed = 0

    @property
    def batch(self) -> _Batch | None:
        return self.batch_list[self.position] if self.position < len(self.batch_list) else None

    def fail(self, message: str, seq: int | None = None) -> None:
        if len(self.report.failures) < MAX_FAILURES:
            self.report.fail(message, seq)
        else:
            self.suppressed += 1

    def _first_located(self, start: int, end: int) -> int | None:
        return min((f.seq for f in self.report.failures if f.seq is not None and start <= f.seq < end), default=None)

    def _explained(self, start: int, end: int) -> bool:
        return self._first_located(start, end) is not None

    # --- entries and batches ---------------------------------------------------------------

    def _batch_for(self, seq: int) -> _Batch | None:
        while (batch := self.batch) is not None and batch.last < seq:
            self.ended.append(batch)
            self.position += 1
        batch = self.batch
        return batch if batch is not None and batch.first <= seq else None

    def entries(self, start: int, end: int, rows: list[Any], stored_leaves: bytes) -> list[bytes]:
        """Check each entry of seqs [start, end); return their leaf hashes (stand-ins where missing)."""
        if self.visit is None:
            leaves = self._clean_chunk(start, end, rows)
            if leaves is not None:
                return leaves
        return self._entries_one_by_one(start, end, rows, stored_leaves)

    def _clean_chunk(self, start: int, end: int, rows: list[Any]) -> list[bytes] | None:
        """The fast path: the same checks as _entries_one_by_one, a column at a time in C-level list
        operations; None (and nothing changed) if anything is off, so the slow path names the seq."""
        if len(rows) != end - start or not rows or rows[0]["seq"] != start or rows[-1]["seq"] != end - 1:
            return None
        sha256, loads = hashlib.sha256, orjson.loads
        leaves = [sha256(b"\x00" + r["canonical"]).digest() for r in rows]
        if b"".join(leaves) != b"".join([r["leaf_hash"] for r in rows]):
            return None
        try:
            kinds = [loads(r["canonical"]).get("kind") for r in rows]
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if kinds != [r["kind"] for r in rows]:
            return None
        batch_ids = [r["batch_id"] for r in rows]
        spans: list[tuple[_Batch, int, int]] = []
        position, seq = self.position, start
        while seq < end:
            while position < len(self.batch_list) and self.batch_list[position].last < seq:
                position += 1
            batch = self.batch_list[position] if position < len(self.batch_list) else None
            if batch is None or batch.first > seq:
                return None
            lo, hi = seq - start, min(batch.last + 1, end) - start
            allowed = {k for k in policy.ENTRY_KINDS if policy.may_append(batch.row["org"], k)}
            if batch_ids[lo:hi].count(batch.row["id"]) != hi - lo or not set(kinds[lo:hi]) <= allowed:
                return None
            spans.append((batch, lo, hi))
            seq = start + hi
        for batch, lo, hi in spans:
            self._batch_for(start + lo)
            batch.leaves.extend(leaves[lo:hi])
        return leaves

    def _entries_one_by_one(self, start: int, end: int, rows: list[Any], stored_leaves: bytes) -> list[bytes]:
        leaves: list[bytes] = []
        sha256 = hashlib.sha256
        rows_iter = iter(rows)
        row = next(rows_iter, None)
        for seq in range(start, end):
            batch = self._batch_for(seq)
            if row is None or row["seq"] != seq:
                self.fail("entry is missing (row deleted or renumbered)", seq)
                i = (seq - start) * 32
                leaf = stored_leaves[i:i + 32] or _ZERO  # the stored node stands in: one failure, not a cascade
            else:
                canonical = row["canonical"]
                leaf = sha256(b"\x00" + canonical).digest()
                if leaf != row["leaf_hash"]:
                    self.fail("entry bytes do not match their stored leaf_hash (entry altered)", seq)
                kind = self._entry(seq, row, canonical)
                if batch is None:
                    self.fail("entry is not covered by any signed batch", seq)
                elif batch.row["id"] != row["batch_id"]:
                    self.fail(f"row names batch {row['batch_id']}, but seq lies in batch {batch.row['id']}", seq)
                elif kind is not None and not policy.may_append(batch.row["org"], kind):
                    self.fail(f"org {batch.row['org']!r} may not append {kind!r}", seq)
                row = next(rows_iter, None)
            if batch is not None:
                batch.leaves.append(leaf)
            leaves.append(leaf)
        return leaves

    def _entry(self, seq: int, row: Any, canonical: bytes) -> str | None:
        try:
            entry = orjson.loads(canonical)
        except orjson.JSONDecodeError:
            self.fail("entry bytes are not JSON", seq)
            return None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind != row["kind"]:
            self.fail(f"kind column says {row['kind']!r} but the entry says {kind!r}", seq)
        if self.visit is not None and isinstance(entry, dict):
            self.visit(seq, entry)
        return kind if isinstance(kind, str) else None

    def finish_batches(self) -> None:
        """Check the batches that ended, once the entry and node checks of their seqs have run."""
        for batch in self.ended:
            self.finish_batch(batch)
        self.ended.clear()

    def finish_batch(self, batch: _Batch) -> None:
        row, first = batch.row, batch.first
        if len(batch.leaves) != batch.last - first + 1:
            self.fail(f"batch {first}..{batch.last} holds {len(batch.leaves)} stored entries", first)
            return
        root = mth(batch.leaves)
        if root != bytes(row["batch_root"]):
            # Pinned to the first seq already found bad inside the batch, else (a forger who rewrote the
            # stored hashes too) to the batch's first seq: the signature vouches for the batch as a whole.
            located = self._first_located(first, batch.last + 1)
            self.fail(f"batch {first}..{batch.last}: entries no longer hash to the root its submitter signed",
                      first if located is None else located)
            return
        statement = signing.stored_batch_statement(row["statement"], row["org"], first, batch.last, root,
                                                   row["signed_at"])
        sig = {"org": row["org"], "cert_pem": row["cert_pem"], "signature": row["signature"]}
        try:
            problem = verifier._signer_problem(sig, statement, verifier._time(row["signed_at"]), self.trust)
        except verifier.Malformed as exc:
            problem = str(exc)
        if problem:
            self.fail(f"batch {first}..{batch.last}: {problem}", first)
        self.report.batches_checked += 1

    def finish(self, end: int) -> None:
        self._batch_for(end)  # ends every batch that ends before `end`
        self.finish_batches()
        for batch in self.batch_list[self.position:]:
            missing_from = max(batch.first, end)
            self.fail(f"batch {batch.first}..{batch.last} was signed, but seqs {missing_from}..{batch.last} "
                      "are not in the log (entries removed from the end)", missing_from)
        if self.suppressed:
            self.report.fail(f"... and {self.suppressed} more problem(s) not listed")

    # --- the tree --------------------------------------------------------------------------

    def tree(self, start: int, leaves: list[bytes], runs: dict[int, bytes]) -> list[list[bytes]]:
        """Rebuild the chunk's perfect subtrees level by level, compare with the stored ones."""
        levels = [leaves]
        while len(levels[-1]) > 1:
            prev = levels[-1]
            sha256 = hashlib.sha256
            levels.append([sha256(b"\x01" + a + b).digest() for a, b in zip(prev[0::2], prev[1::2], strict=False)])
        bad: set[int] = set()
        for level, hashes in enumerate(levels):
            stored = runs.get(level, b"")
            if b"".join(hashes) == stored:
                bad = set()
                continue
            now_bad = set()
            for i in range(max(len(hashes), len(stored) // 32)):
                mine, theirs = (hashes[i] if i < len(hashes) else None), stored[i * 32:(i + 1) * 32] or None
                if mine == theirs:
                    continue
                now_bad.add(i)
                if level and (2 * i in bad or 2 * i + 1 in bad):
                    continue  # a child is already reported; this node is its consequence
                seq = ((start >> level) + i) << level
                what = "is missing" if theirs is None else "does not match the entries below it"
                self.fail(f"stored tree node (level {level}, index {(start >> level) + i}) {what}", seq)
            bad = now_bad
        return levels

    def chunk_done(self, start: int, levels: list[list[bytes]]) -> None:
        if len(levels[0]) < CHUNK:
            return
        for node in self.coarse.append(levels[CHUNK_LEVEL][0])[1:]:
            level, index = node.level + CHUNK_LEVEL, node.index
            stored = self.upper.get((level, index))
            lo, hi = index << level, (index + 1) << level
            if stored != node.hash and not self._explained(lo, hi):
                self.fail(f"stored tree node (level {level}, index {index}) does not match the entries below it", lo)

    def root_at(self, start: int, size: int, levels: list[list[bytes]]) -> bytes:
        """Root of the tree of `size` leaves, start < size <= start + len(chunk)."""
        parts = [digest for _, digest in self.coarse.stack]
        offset = 0
        for level in range(CHUNK_LEVEL, -1, -1):
            if (size - start) >> level & 1:
                parts.append(levels[level][offset >> level])
                offset += 1 << level
        return _fold(parts)


def _checkpoint_signatures(checkpoints: list[Any], trust: TrustStore, report: VerificationReport) -> None:
    previous = ""
    for row in checkpoints:
        label = f"checkpoint of size {row['tree_size']}"
        value = {"tree_size": row["tree_size"], "root_hash": bytes(row["root_hash"]).hex(),
                 "timestamp": row["signed_at"], "signatures": row["signatures"]}
        try:  # the offline verifier's own rules; co-signers are not required on every checkpoint
            failures = len(report.failures)
            verifier._checkpoint(value, label, trust, report, required=(policy.CHECKPOINT_SIGNER,))
            if len(report.failures) == failures and not policy.missing_signers(set(report.checkpoint_signers)):
                report.cosigned_size = row["tree_size"]
        except verifier.Malformed as exc:
            report.fail(f"{label}: {exc}")
        if row["signed_at"] < previous:
            report.fail(f"{label} is dated before the checkpoint preceding it")
        previous = row["signed_at"]


async def audit(pool: Pool, trust: TrustStore, visit: EntryVisitor | None = None) -> VerificationReport:
    report = VerificationReport()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        _, end = await repo.entry_count_and_end(conn)
        checkpoints = list(await repo.all_checkpoints(conn))
        auditor = _Auditor(report, trust, list(await repo.all_batches(conn)),
                           await repo.nodes_above(conn, CHUNK_LEVEL), visit)
        _checkpoint_signatures(checkpoints, trust, report)
        pending = iter(checkpoints)
        checkpoint = next(pending, None)
        while checkpoint is not None and checkpoint["tree_size"] == 0:
            if bytes(checkpoint["root_hash"]) != merkle.EMPTY_ROOT:
                auditor.fail("checkpoint of size 0 does not carry the empty tree's root")
            checkpoint = next(pending, None)
        for start in range(0, end, CHUNK):
            stop = min(start + CHUNK, end)
            runs = await repo.node_runs(conn, start, stop, CHUNK_LEVEL)
            leaves = auditor.entries(start, stop, await repo.entry_chunk(conn, start, stop), runs[0])
            levels = auditor.tree(start, leaves, runs)
            auditor.finish_batches()
            while checkpoint is not None and checkpoint["tree_size"] <= stop:
                size = checkpoint["tree_size"]
                if auditor.root_at(start, size, levels) != bytes(checkpoint["root_hash"]):
                    auditor.fail(f"checkpoint of size {size}: stored entries no longer hash to its signed root")
                checkpoint = next(pending, None)
            auditor.chunk_done(start, levels)
            report.entries_checked += len(leaves)
        for beyond in [checkpoint, *pending] if checkpoint is not None else []:
            auditor.fail(f"checkpoint of size {beyond['tree_size']} but the log holds {end} entries "
                         "(entries removed from the end)", end)
        auditor.finish(end)
    report.tree_size = end
    return report
