"""The embedded ledger backend: the port (ledger.port.Ledger) over the `ledger` schema.

Appends. One transaction per batch: take the appenders' advisory lock, read the head (max seq, by
index), sign the batch, COPY its entries and the tree nodes it completes, and cut a checkpoint if
`checkpoint_every` entries went in since the last one. The frontier (O(log n) hashes) is cached in
the process and trusted only while the head's size matches it; otherwise (another process appended)
it is rebuilt from O(log n) stored nodes. So an append costs O(batch + log n), never O(n).

Checkpoints are signed by the `ledger` identity and co-signed by `finance`; both keys live under
OMNISTOCK_DATA_DIR/ledger/msp. Timestamps never go backwards: a checkpoint is dated no earlier than
the batches it covers and the checkpoint before it, whatever the clock says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ledger import merkle, policy, signing
from ledger.bundle import batch_record, entry_record, make_bundle
from ledger.encoding import canonical_bytes, format_timestamp
from ledger.identity import Identity, TrustStore, init_identities, load_identity, msp_dir
from ledger.port import BadRange, DuplicateEntryKey, Entry, EntryNotFound, EntryVisitor, Json, Receipt
from ledger.postgres import audit as audit_log
from ledger.postgres import repository as repo
from ledger.verify import VerificationReport
from shared.db import Connection, Pool, transaction


def decomposition(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, index) that make up a tree of `size` leaves, largest first."""
    nodes, offset = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, offset >> level))
            offset += 1 << level
    return nodes


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
        "cert_pem": row["cert_pem"], "signature": row["signature"],
    }


def encode_entries(entries: Sequence[Entry], org: str) -> list[tuple[str, bytes]]:
    """(kind, canonical bytes) of each entry; ValueError for a malformed one, PermissionDenied by policy."""
    encoded = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
            raise ValueError(f"entries[{position}] must be an object with a string 'kind'")
        policy.require_append(org, entry["kind"])
        encoded.append((entry["kind"], canonical_bytes(dict(entry))))
    return encoded


MAX_ENTRY_KEY = 200


def entry_key_of(entry: Entry, position: int) -> str | None:
    key = entry.get("entry_key")
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ENTRY_KEY:
        raise ValueError(f"entries[{position}].entry_key must be a string of 1 to {MAX_ENTRY_KEY} characters")
    return key


def _complete(receipts: list[Receipt | None], copies: dict[int, int]) -> list[Receipt]:
    """One receipt per entry appended: a repeated key's copies get its first occurrence's."""
    for position, earlier in copies.items():
        receipts[position] = receipts[earlier]
    assert all(r is not None for r in receipts)
    return [r for r in receipts if r is not None]


class PostgresLedger:
    def __init__(self, pool: Pool, data_dir: Path, *, checkpoint_every: int = 10_000,
                 max_export_entries: int = 100_000) -> None:
        self.pool = pool
        self.data_dir = Path(data_dir)
        self.checkpoint_every = checkpoint_every
        self.max_export_entries = max_export_entries
        init_identities(self.data_dir)  # keeps whatever exists; creates what is missing
        self.checkpoint_signers: list[Identity] = [load_identity(self.data_dir, "ledger"),
                                                   load_identity(self.data_dir, "finance")]
        self._frontier = merkle.Frontier()

    # --- writes -----------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry], identity: Identity) -> list[Receipt]:
        if not entries:
            raise ValueError("an append needs at least one entry")
        encoded = encode_entries(entries, identity.org)
        keys = [entry_key_of(entry, position) for position, entry in enumerate(entries)]
        async with transaction(self.pool) as conn:
            await repo.lock_appenders(conn)  # also makes the entry_key lookup below exact
            receipts, fresh, copies = await self._known(conn, encoded, keys)
            if not fresh:
                return _complete(receipts, copies)
            leaves = [merkle.leaf_hash(encoded[i][1]) for i in fresh]
            head = await repo.head(conn)
            frontier = await self._frontier_at(conn, head["tree_size"])
            first, batch_id = frontier.size, head["next_batch_id"]
            stamp = self._timestamp(head["batch_signed_at"], head["checkpoint_signed_at"])
            batch = signing.sign_batch(identity, first, first + len(leaves) - 1, leaves, stamp)
            await repo.insert_batch(conn, batch_id, batch)
            await repo.insert_entries(conn, [(first + n, batch_id, encoded[i][0], encoded[i][1], leaves[n], keys[i])
                                             for n, i in enumerate(fresh)])
            await repo.insert_nodes(conn, [(node.level, node.index, node.hash) for node in frontier.extend(leaves)])
            last_checkpoint = head["checkpoint_size"] or 0
            if frontier.size - last_checkpoint >= self.checkpoint_every:
                await self._sign_checkpoint(conn, frontier, stamp, head["checkpoint_signed_at"])
        self._frontier = frontier  # only once committed
        for n, i in enumerate(fresh):
            receipts[i] = Receipt(first + n, leaves[n].hex(), batch_id)
        return _complete(receipts, copies)

    async def _known(self, conn: Connection, encoded: list[tuple[str, bytes]], keys: list[str | None]
                     ) -> tuple[list[Receipt | None], list[int], dict[int, int]]:
        """Receipts of the entries already in the log (by kind and entry_key), the positions to write,
        and the later copies of a key repeated inside this append (position -> its first position)."""
        wanted = [(kind, key) for (kind, _), key in zip(encoded, keys, strict=True) if key is not None]
        stored = await repo.entries_by_key(conn, wanted) if wanted else {}
        receipts: list[Receipt | None] = [None] * len(encoded)
        fresh: list[int] = []
        copies: dict[int, int] = {}
        first_in_append: dict[tuple[str, str], int] = {}
        conflicts: dict[int, Receipt] = {}
        for position, ((kind, data), key) in enumerate(zip(encoded, keys, strict=True)):
            if key is None:
                fresh.append(position)
            elif (row := stored.get((kind, key))) is not None:
                receipt = Receipt(row["seq"], bytes(row["leaf_hash"]).hex(), row["batch_id"])
                if bytes(row["canonical"]) == data:
                    receipts[position] = receipt
                else:
                    conflicts[position] = receipt
            elif (earlier := first_in_append.get((kind, key))) is not None:
                if encoded[earlier][1] != data:
                    raise ValueError(f"entries[{position}] repeats the entry_key of entries[{earlier}] "
                                     "with other content")
                copies[position] = earlier
            else:
                first_in_append[(kind, key)] = position
                fresh.append(position)
        if conflicts:
            raise DuplicateEntryKey(
                f"entry_key already in the log with other content at entries {sorted(conflicts)}", conflicts)
        return receipts, fresh, copies

    async def cut_checkpoint(self) -> Json | None:
        async with transaction(self.pool) as conn:
            await repo.lock_appenders(conn)
            head = await repo.head(conn)
            frontier = await self._frontier_at(conn, head["tree_size"])
            grew = head["checkpoint_size"] is None or frontier.size > head["checkpoint_size"]
            if grew and frontier.size > 0:
                return await self._sign_checkpoint(conn, frontier, head["batch_signed_at"],
                                                   head["checkpoint_signed_at"])
            row = await repo.latest_checkpoint(conn)
        return checkpoint_json(row) if row else None

    async def _sign_checkpoint(self, conn: Connection, frontier: merkle.Frontier, *not_before: str | None) -> Json:
        checkpoint = signing.sign_checkpoint(frontier.size, frontier.root(), self._timestamp(*not_before),
                                             self.checkpoint_signers)
        await repo.insert_checkpoint(conn, checkpoint)
        return checkpoint

    @staticmethod
    def _timestamp(*not_before: str | None) -> str:
        # The fixed-width format sorts as text in time order, so max() is the latest.
        return max([format_timestamp(datetime.now(UTC)), *(t for t in not_before if t)])

    async def _frontier_at(self, conn: Connection, size: int) -> merkle.Frontier:
        if self._frontier.size == size:
            return self._frontier.copy()
        nodes = await repo.fetch_nodes(conn, decomposition(size))
        return merkle.Frontier.from_store(size, lambda level, index: nodes[level, index])

    # --- reads ------------------------------------------------------------------------------

    async def checkpoint(self) -> Json | None:
        row = await repo.latest_checkpoint(self.pool)
        return checkpoint_json(row) if row else None

    async def entry(self, seq: int) -> Json:
        row = await repo.entry_with_checkpoint(self.pool, seq)
        if row is None:
            raise EntryNotFound(f"no entry with seq {seq}")
        if row["tree_size"] is None or seq >= row["tree_size"]:
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
            wanted = {*merkle.consistency_proof_nodes(first, second), *decomposition(first), *decomposition(second)}
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
        latest = await self.checkpoint()
        if latest is None or last >= latest["tree_size"]:
            latest = await self.cut_checkpoint()
        if latest is None or last >= latest["tree_size"]:
            raise BadRange(f"the log has {latest['tree_size'] if latest else 0} entries")
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
                cnodes = await repo.fetch_nodes(conn, merkle.consistency_proof_nodes(since, size))
                proof = merkle.consistency_proof(since, size, lambda level, index: cnodes[level, index])
        def get(level: int, index: int) -> bytes:
            return nodes[level, index]

        entries = [entry_record(r["seq"], orjson.loads(r["canonical"]), merkle.inclusion_proof(r["seq"], size, get))
                   for r in rows]
        return make_bundle(latest, entries, records, earlier, proof)

    async def audit(self, visit: EntryVisitor | None = None) -> VerificationReport:
        trust = TrustStore.from_dir(msp_dir(self.data_dir))
        return await audit_log.audit(self.pool, trust, visit)
