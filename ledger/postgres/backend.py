"""The embedded ledger backend: the port (ledger.port.Ledger) over the `ledger` schema.

Appends. The submitter signed the batch in its own process (ledger.signing.sign_submission); the
backend holds no member key of anyone's. Before any write: the signature must verify over exactly the
entries received, by a member the trust store (OMNISTOCK_DATA_DIR/ledger/msp, re-read when a file there
changes, so a revocation counts at once) trusts at the signed time, within `max_clock_skew_s` of this
clock, and the policy must let the signer's org append every kind. Then one transaction: take the
appenders' advisory lock, read the head (max seq, by index), refuse a timestamp older than the latest
batch's (the log's times never go back), COPY the entries and the tree nodes they complete, and, if
this backend holds the ledger identity, cut a checkpoint when `checkpoint_every` entries went in since
the last one. The frontier (O(log n) hashes) is cached in the process and trusted only while the head's
size matches it; otherwise (another process appended) it is rebuilt from O(log n) stored nodes. So an
append costs O(batch + log n) and one ECDSA verify, never O(n).

Checkpoints are signed by the `ledger` identity (`checkpoint_signer`: the ledger service passes it;
finance's in-process port has none and never cuts); co-signatures arrive through `cosign`, made by
their organisation in its own process, and are verified like appends. Timestamps never go backwards: a
checkpoint is dated no earlier than the batches it covers and the checkpoint before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ledger import merkle, policy, signing
from ledger.bundle import batch_record, entry_record, make_bundle
from ledger.encoding import format_timestamp, parse_timestamp
from ledger.entries import encode_entries, entry_key_of, keys_in_append, known_receipts, receipts_if_all_known
from ledger.identity import Identity, TrustCache, msp_dir
from ledger.port import (
    BadRange,
    CheckpointNotFound,
    Entry,
    EntryNotFound,
    EntryVisitor,
    Json,
    NotCosigned,
    Receipt,
    StaleSignature,
    Submission,
)
from ledger.postgres import audit as audit_log
from ledger.postgres import repository as repo
from ledger.verify import VerificationReport
from shared.db import Connection, Pool, transaction


def checkpoint_json(row: Mapping[str, Any]) -> Json:
    return {
        "tree_size": row["tree_size"],
        "root_hash": bytes(row["root_hash"]).hex(),
        "timestamp": row["signed_at"],
        "signatures": list(row["signatures"]),
    }


def _batch_json(row: Mapping[str, Any]) -> Json:
    return {
        "org": row["org"], "first_seq": row["first_seq"], "last_seq": row["last_seq"],
        "timestamp": row["signed_at"], "batch_root": bytes(row["batch_root"]).hex(),
        "cert_pem": row["cert_pem"], "signature": row["signature"], "statement": row["statement"],
    }


class PostgresLedger:
    def __init__(self, pool: Pool, data_dir: Path, *, checkpoint_signer: Identity | None = None,
                 checkpoint_every: int = 10_000, max_export_entries: int = 100_000,
                 max_clock_skew_s: float = 120.0) -> None:
        self.pool = pool
        self.data_dir = Path(data_dir)
        self.checkpoint_every = checkpoint_every
        self.max_export_entries = max_export_entries
        self.max_clock_skew_s = max_clock_skew_s
        if checkpoint_signer is not None and checkpoint_signer.org != policy.CHECKPOINT_SIGNER:
            raise ValueError(f"checkpoints are signed by the {policy.CHECKPOINT_SIGNER!r} identity")
        self.checkpoint_signer = checkpoint_signer
        self.trust = TrustCache(msp_dir(self.data_dir))
        self._frontier = merkle.Frontier()

    # --- writes -----------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry], submission: Submission) -> list[Receipt]:
        if not entries:
            raise ValueError("an append needs at least one entry")
        encoded = encode_entries(entries)
        keys = [entry_key_of(entry, position) for position, entry in enumerate(entries)]
        leaves = [merkle.leaf_hash(data) for _, data in encoded]
        batch_root = signing.check_submission(self.trust.current(), submission, leaves, datetime.now(UTC),
                                              self.max_clock_skew_s)
        for kind, _ in encoded:  # the signer is who it says: may its organisation append these kinds?
            policy.require_append(submission.org, kind)
        async with transaction(self.pool) as conn:
            await repo.lock_appenders(conn)  # also makes the entry_key lookup below exact
            known = await self._known(conn, encoded, keys)
            if (receipts := receipts_if_all_known(known, len(encoded))) is not None:
                return receipts
            head = await repo.head(conn)
            if head["batch_signed_at"] is not None and submission.timestamp < head["batch_signed_at"]:
                raise StaleSignature(f"signed at {submission.timestamp}, before the log's latest batch "
                                     f"({head['batch_signed_at']}): sign again")
            frontier = await self._frontier_at(conn, head["tree_size"])
            first, batch_id = frontier.size, head["next_batch_id"]
            batch = {"org": submission.org, "first_seq": first, "last_seq": first + len(leaves) - 1,
                     "timestamp": submission.timestamp, "batch_root": batch_root.hex(),
                     "cert_pem": submission.cert_pem, "signature": submission.signature,
                     "statement": signing.SUBMISSION}
            await repo.insert_batch(conn, batch_id, batch)
            await repo.insert_entries(conn, [(first + n, batch_id, kind, data, leaves[n], keys[n])
                                             for n, (kind, data) in enumerate(encoded)])
            await repo.insert_nodes(conn, [(node.level, node.index, node.hash) for node in frontier.extend(leaves)])
            last_checkpoint = head["checkpoint_size"] or 0
            if self.checkpoint_signer and frontier.size - last_checkpoint >= self.checkpoint_every:
                await self._sign_checkpoint(conn, frontier, submission.timestamp, head["checkpoint_signed_at"])
        self._frontier = frontier  # only once committed
        return [Receipt(first + n, leaf.hex(), batch_id) for n, leaf in enumerate(leaves)]

    async def _known(self, conn: Connection, encoded: list[tuple[str, bytes]], keys: list[str | None]
                     ) -> dict[int, Receipt]:
        """Receipts, by position, of the entries already in the log (by kind and entry_key, same bytes).
        Other content under a stored key raises DuplicateEntryKey; a key twice in one append, ValueError."""
        first_in_append = keys_in_append([kind for kind, _ in encoded], keys)
        rows = await repo.entries_by_key(conn, list(first_in_append)) if first_in_append else {}
        stored = {key: (Receipt(row["seq"], bytes(row["leaf_hash"]).hex(), row["batch_id"]),
                        bytes(row["canonical"]) == encoded[first_in_append[key]][1])
                  for key, row in rows.items()}
        return known_receipts(first_in_append, stored)

    async def cut_checkpoint(self) -> Json | None:
        return await self._cut(max_age_s=0.0)

    async def cut_checkpoint_if_due(self, max_age_s: float) -> Json | None:
        """What the ledger service's timer calls: cut if `checkpoint_every` entries went in since the
        last checkpoint, or the tree grew and the last one is `max_age_s` old (finance's in-process
        appends never cut: they hold no ledger key)."""
        return await self._cut(max_age_s)

    async def _cut(self, max_age_s: float) -> Json | None:
        if self.checkpoint_signer is None:
            return await self.checkpoint()
        async with transaction(self.pool) as conn:
            await repo.lock_appenders(conn)
            head = await repo.head(conn)
            frontier = await self._frontier_at(conn, head["tree_size"])
            grew = head["checkpoint_size"] is None or frontier.size > head["checkpoint_size"]
            if grew and frontier.size > 0 and self._due(frontier.size, head, max_age_s):
                return await self._sign_checkpoint(conn, frontier, head["batch_signed_at"],
                                                   head["checkpoint_signed_at"])
            row = await repo.latest_checkpoint(conn)
        return checkpoint_json(row) if row else None

    def _due(self, size: int, head: Mapping[str, Any], max_age_s: float) -> bool:
        if head["checkpoint_size"] is None or size - head["checkpoint_size"] >= self.checkpoint_every:
            return True
        age = (datetime.now(UTC) - parse_timestamp(head["checkpoint_signed_at"])).total_seconds()
        return age >= max_age_s

    async def _sign_checkpoint(self, conn: Connection, frontier: merkle.Frontier, *not_before: str | None) -> Json:
        assert self.checkpoint_signer is not None
        checkpoint = signing.sign_checkpoint(frontier.size, frontier.root(), self._timestamp(*not_before),
                                             [self.checkpoint_signer])
        await repo.insert_checkpoint(conn, checkpoint)
        return checkpoint

    async def cosign(self, tree_size: int, signature: Mapping[str, str]) -> Json:
        org = str(signature["org"])
        policy.require_cosign(org)
        checkpoint = await self.checkpoint_of_size(tree_size)
        if any(s["org"] == org for s in checkpoint["signatures"]):
            return checkpoint  # the first co-signature of an org stands; a repeat changes nothing
        statement = signing.checkpoint_statement(tree_size, bytes.fromhex(checkpoint["root_hash"]),
                                                 checkpoint["timestamp"])
        # At the checkpoint's time, as the offline verifier checks it.
        signing.check_signature(self.trust.current(), org, str(signature["cert_pem"]), statement,
                                str(signature["signature"]), parse_timestamp(checkpoint["timestamp"]))
        await repo.insert_cosignature(self.pool, tree_size, {"org": org, "cert_pem": str(signature["cert_pem"]),
                                                             "signature": str(signature["signature"])})
        return await self.checkpoint_of_size(tree_size)

    @staticmethod
    def _timestamp(*not_before: str | None) -> str:
        # The fixed-width format sorts as text in time order, so max() is the latest.
        return max([format_timestamp(datetime.now(UTC)), *(t for t in not_before if t)])

    async def _frontier_at(self, conn: Connection, size: int) -> merkle.Frontier:
        if self._frontier.size == size:
            return self._frontier.copy()
        nodes = await repo.fetch_nodes(conn, merkle.decomposition(size))
        return merkle.Frontier.from_store(size, lambda level, index: nodes[level, index])

    # --- reads ------------------------------------------------------------------------------

    async def checkpoint(self) -> Json | None:
        row = await repo.latest_checkpoint(self.pool)
        return checkpoint_json(row) if row else None

    async def checkpoint_of_size(self, tree_size: int) -> Json:
        row = await repo.checkpoint_of_size(self.pool, tree_size)
        if row is None:
            raise CheckpointNotFound(f"no checkpoint of tree size {tree_size}")
        return checkpoint_json(row)

    async def latest_cosigned(self, org: str) -> Json | None:
        row = await repo.latest_signed_by(self.pool, org)
        return checkpoint_json(row) if row else None

    async def latest_complete(self) -> Json | None:
        """The latest checkpoint carrying a signature of every org in policy.CHECKPOINT_SIGNERS (as
        stored: the bundle's reader verifies them)."""
        rows = [await repo.latest_signed_by(self.pool, org) for org in policy.CHECKPOINT_SIGNERS]
        if any(row is None for row in rows):
            return None
        # The ledger signs every checkpoint, so the latest one its co-signers signed is complete.
        candidate = checkpoint_json(min((row for row in rows if row is not None), key=lambda row: row["tree_size"]))
        return None if policy.missing_signers({s["org"] for s in candidate["signatures"]}) else candidate

    async def find(self, *, entry_key: str | None = None, order_id: str | None = None,
                   limit: int = 50) -> list[tuple[int, str]]:
        # finance keys a reconciled sale "sale:<order id>:<business day>" (services/finance/ledger_commit.py)
        prefix = f"sale:{order_id}:" if order_id is not None else None
        rows = await repo.find_seqs(self.pool, entry_key, prefix, limit)
        return [(row["seq"], row["kind"]) for row in rows]

    async def entry(self, seq: int) -> Json:
        row = await repo.entry_with_checkpoint(self.pool, seq)
        if row is None:
            raise EntryNotFound(f"no entry with seq {seq}")
        if row["tree_size"] is None or seq >= row["tree_size"]:
            if self.checkpoint_signer is None:
                raise BadRange(f"entry {seq} is newer than the latest checkpoint; the ledger service cuts one soon")
            await self.cut_checkpoint()  # the entry is newer than the last checkpoint: cut one now
            row = await repo.entry_with_checkpoint(self.pool, seq)
            assert row is not None
        size = row["tree_size"]
        nodes = await repo.fetch_nodes(self.pool, merkle.inclusion_proof_nodes(seq, size))
        proof = merkle.inclusion_proof(seq, size, lambda level, index: nodes[level, index])
        return {
            "seq": seq,
            "entry": orjson.loads(row["canonical"]),
            "leaf_hash": bytes(row["leaf_hash"]).hex(),
            "inclusion_proof": [h.hex() for h in proof],
            "checkpoint": checkpoint_json(row),
        }

    async def consistency(self, first: int, second: int | None = None) -> Json:
        async with self.pool.acquire() as conn:
            latest = await repo.latest_checkpoint(conn)
            latest_size = latest["tree_size"] if latest else 0
            second = latest_size if second is None else second
            if not 0 <= first <= second <= latest_size:
                raise BadRange(f"need 0 <= first <= second <= {latest_size} (the latest checkpoint's size)")
            wanted = {*merkle.consistency_proof_nodes(first, second), *merkle.decomposition(first),
                      *merkle.decomposition(second)}
            nodes = await repo.fetch_nodes(conn, wanted)
            signed = await repo.checkpoint_of_size(conn, second)
        def get(level: int, index: int) -> bytes:
            return nodes[level, index]

        def root(size: int) -> bytes:
            return merkle.subtree_hash(0, size, get) if size else merkle.EMPTY_ROOT

        return {
            "first": first,
            "second": second,
            "first_root": root(first).hex(),
            "second_root": root(second).hex(),
            "proof": [h.hex() for h in merkle.consistency_proof(first, second, get)],
            "checkpoint": checkpoint_json(signed) if signed else None,
        }

    async def export(self, first: int, last: int, since: int | None = None) -> Json:
        if not 0 <= first <= last:
            raise BadRange("need 0 <= from <= to")
        if last - first + 1 > self.max_export_entries:
            raise BadRange(f"at most {self.max_export_entries} entries per export")
        # A bundle proves its entries against a checkpoint every organisation of the policy signed (the
        # offline verifier requires it), so an export waits for finance's co-signature.
        latest = await self.latest_complete()
        if latest is None or last >= latest["tree_size"]:
            newest = await self.cut_checkpoint()
            if newest is None or last >= newest["tree_size"]:
                raise BadRange(f"the log has {await self._size()} entries")
            covered = latest["tree_size"] if latest else 0
            raise NotCosigned(f"seq {last} is in the checkpoint of size {newest['tree_size']}, which awaits the "
                              f"co-signature of {', '.join(sorted(policy.CHECKPOINT_COSIGNERS))} (co-signed so far: "
                              f"{covered} entries); try again in a few seconds")
        size = latest["tree_size"]
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await repo.entries_between(conn, first, last)
            wanted = {key for seq in range(first, last + 1) for key in merkle.inclusion_proof_nodes(seq, size)}
            nodes = await repo.fetch_nodes(conn, wanted)
            batches = await repo.batches_overlapping(conn, first, last)
            records = []
            for b in batches:
                inside = first <= b["first_seq"] and b["last_seq"] <= last
                hashes = None if inside else await repo.leaf_hashes(conn, b["first_seq"], b["last_seq"])
                records.append(batch_record(_batch_json(b), hashes))
            earlier, proof = None, []
            if since is not None:
                row = await repo.checkpoint_of_size(conn, since)
                if row is None or since > size:
                    raise BadRange(f"no checkpoint of tree size {since} at or before {size}")
                earlier = checkpoint_json(row)
                if missing := policy.missing_signers({s["org"] for s in earlier["signatures"]}):
                    raise NotCosigned(f"the checkpoint of size {since} is not signed by {', '.join(missing)}; "
                                      "pick a co-signed one")
                cnodes = await repo.fetch_nodes(conn, merkle.consistency_proof_nodes(since, size))
                proof = merkle.consistency_proof(since, size, lambda level, index: cnodes[level, index])
        def get(level: int, index: int) -> bytes:
            return nodes[level, index]

        entries = [entry_record(r["seq"], orjson.loads(r["canonical"]), merkle.inclusion_proof(r["seq"], size, get))
                   for r in rows]
        return make_bundle(latest, entries, records, earlier, proof)

    async def _size(self) -> int:
        async with self.pool.acquire() as conn:
            return int((await repo.head(conn))["tree_size"])

    async def audit(self, visit: EntryVisitor | None = None) -> VerificationReport:
        return await audit_log.audit(self.pool, self.trust.current(), visit)
