"""The ledger contract: the rules every endorsing peer runs, over any WorldState.

Transactions (arguments and results are JSON; results canonical, so every endorser returns the same bytes):

    append(groups)        groups: [{"entries": [...], "submission": Submission JSON}, ...], applied in order.
                          Each group is one submitter's signed batch, accepted or refused on its own, so
                          the client can carry many submitters' batches in one transaction. Result, per
                          group: {"receipts": [[seq, leaf hex, batch_id], ...]} or
                          {"refused": type, "message": str, "existing": {position: receipt}}.
    checkpoint()          the checkpoint statement (ledger.signing.checkpoint_statement) of the current
                          tree, recorded under c/<size>; the response payload IS the statement's bytes, so
                          the endorsements of the retailer's and the audit firm's peers are signatures
                          over exactly what the offline verifier checks. Without growth: the latest one,
                          nothing written.
    head()                {"size", "batch_ts", "checkpoint"} (reads; evaluated, never submitted)
    checkpoint_of_size(n) the c/<n> record, or null
    checkpoints(n, limit) the c/ records of size >= n, in size order (an audit's walk over every checkpoint)
    nodes(pairs)          [hex] of the complete subtrees [[level, index], ...] (what proofs are made from)
    batches(first, last)  the signed batches overlapping seqs first..last, with their entries
    find(entry_key, order_id, limit)  [[seq, kind]] in seq order

An append is checked as the embedded backend checks it (shared functions of ledger.entries,
ledger.signing and ledger.policy), plus one rule only Fabric has: the transaction's creator must
belong to an MSP that acts for the organisation that signed the batch (ledger.policy.require_msp_acts_for).
Time is the proposal's timestamp, the same on every endorser: a submission must be signed within
`max_clock_skew_s` of it, and never before the log's latest batch. Nothing here overwrites a key
except `head` and the growing end of a tile, so nobody, whatever they send, rewrites a recorded entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger import merkle, policy, signing
from ledger.encoding import format_timestamp
from ledger.entries import encode_entries, entry_key_of, keys_in_append, known_receipts, receipts_if_all_known
from ledger.fabric.chaincode.state import (
    Head,
    Tiles,
    WorldState,
    batch_key,
    batches_from,
    checkpoint_key,
    checkpoints_from,
    dump,
    entry_key_index,
    load,
)
from ledger.fabric.refusals import refusal_type
from ledger.identity import TrustStore
from ledger.port import Receipt

CHECKPOINT_EVENT = "checkpoint"  # the chaincode event of a checkpoint transaction; payload: its statement
MAX_GROUPS = 10_000
MAX_FIND = 1_000


class Refused(Exception):
    """A whole transaction refused (malformed arguments, unknown function, unknown MSP)."""


def receipt_json(receipt: Receipt) -> list[Any]:
    return [receipt.seq, receipt.leaf_hash, receipt.batch_id]


@dataclass(frozen=True)
class ContractConfig:
    trust: Callable[[], TrustStore]  # the trust store of our organisations' CAs (re-read when it changes)
    msp_orgs: Mapping[str, frozenset[str]]
    max_clock_skew_s: float = 120.0


class LedgerContract:
    TRANSACTIONS = ("append", "checkpoint", "head", "checkpoint_of_size", "checkpoints", "nodes", "batches", "find")

    def __init__(self, config: ContractConfig) -> None:
        self.config = config

    async def invoke(self, state: WorldState, function: str, args: list[str]) -> bytes:
        """Run one transaction; Refused (or ValueError, PermissionDenied) refuses all of it."""
        if function not in self.TRANSACTIONS:
            raise Refused(f"unknown transaction {function!r}; the ledger offers {', '.join(self.TRANSACTIONS)}")
        method = getattr(self, function)
        try:
            parsed = [load(arg) for arg in args]
        except ValueError as exc:
            raise Refused(f"{function}: arguments must be JSON: {exc}") from None
        try:
            return dump(await method(state, *parsed))
        except TypeError as exc:
            raise Refused(f"{function}: wrong arguments: {exc}") from None

    # --- writes -----------------------------------------------------------------------------

    async def append(self, state: WorldState, groups: Any) -> list[dict[str, Any]]:
        if not isinstance(groups, list) or not 0 < len(groups) <= MAX_GROUPS:
            raise Refused(f"append takes a list of 1 to {MAX_GROUPS} signed batches")
        msp_id, _ = state.creator()
        policy.require_known_msp(self.config.msp_orgs, msp_id, "append")
        head = await Head.read(state)
        tiles = Tiles(state)
        batch = _Batch(state, head, tiles)
        results = []
        for group in groups:
            try:
                receipts = await self._append_group(batch, msp_id, group)
                results.append({"receipts": [receipt_json(r) for r in receipts]})
            except (ValueError, policy.PermissionDenied) as exc:
                existing = getattr(exc, "existing", {})
                results.append({"refused": refusal_type(exc), "message": str(exc),
                                "existing": {str(p): receipt_json(r) for p, r in existing.items()}})
        if batch.wrote:
            await tiles.flush()
            await state.put("head", head.dump())
        return results

    async def _append_group(self, batch: _Batch, msp_id: str, group: Any) -> list[Receipt]:
        if not isinstance(group, dict) or set(group) != {"entries", "submission"}:
            raise ValueError('each signed batch is {"entries": [...], "submission": {...}}')
        entries, raw_submission = group["entries"], group["submission"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("an append needs at least one entry")
        if not isinstance(raw_submission, dict):
            raise ValueError("submission must be an object")
        try:
            submission = signing.Submission.from_json(raw_submission)
        except KeyError as exc:
            raise ValueError(f"submission lacks {exc}") from None
        encoded = encode_entries(entries)
        keys = [entry_key_of(entry, position) for position, entry in enumerate(entries)]
        leaves = [merkle.leaf_hash(data) for _, data in encoded]
        policy.require_msp_acts_for(self.config.msp_orgs, msp_id, submission.org)
        batch_root = signing.check_submission(self.config.trust(), submission, leaves, batch.state.tx_timestamp(),
                                              self.config.max_clock_skew_s)
        for kind, _ in encoded:
            policy.require_append(submission.org, kind)
        first_in_append = keys_in_append([kind for kind, _ in encoded], keys)
        stored = {}
        for key, position in first_in_append.items():
            if (found := await batch.indexed(*key)) is not None:
                stored[key] = (found[0], found[1] == leaves[position])
        if (receipts := receipts_if_all_known(known_receipts(first_in_append, stored), len(encoded))) is not None:
            return receipts
        if batch.head.batch_ts is not None and submission.timestamp < batch.head.batch_ts:
            raise signing.StaleSignature(f"signed at {submission.timestamp}, before the log's latest batch "
                                         f"({batch.head.batch_ts}): sign again")
        return await batch.write(submission, batch_root, entries, encoded, keys, leaves)

    async def checkpoint(self, state: WorldState) -> dict[str, Any]:
        msp_id, _ = state.creator()
        policy.require_known_msp(self.config.msp_orgs, msp_id, "cut checkpoints")
        head = await Head.read(state)
        if head.size == 0:
            raise Refused("the log is empty: there is nothing to checkpoint")
        latest = head.checkpoint
        if latest is not None and latest["tree_size"] == head.size:
            return _statement(latest)
        # The latest of: the proposal's time, the newest batch's and the last checkpoint's, so a
        # checkpoint is never dated before what it covers nor before the checkpoint it extends.
        stamps = [format_timestamp(state.tx_timestamp()), head.batch_ts, latest["timestamp"] if latest else None]
        record = {"tree_size": head.size, "root_hash": head.frontier.root().hex(),
                  "timestamp": max(s for s in stamps if s), "txid": state.tx_id()}
        head.checkpoint = record
        await state.put(checkpoint_key(head.size), dump(record))
        await state.put("head", head.dump())
        return _statement(record)

    # --- reads ------------------------------------------------------------------------------

    async def head(self, state: WorldState) -> dict[str, Any]:
        head = await Head.read(state)
        return {"size": head.size, "batch_ts": head.batch_ts, "checkpoint": head.checkpoint}

    async def checkpoint_of_size(self, state: WorldState, tree_size: Any) -> dict[str, Any] | None:
        raw = await state.get(checkpoint_key(_count(tree_size, "tree_size")))
        return load(raw) if raw is not None else None

    async def checkpoints(self, state: WorldState, from_size: Any, limit: Any) -> list[dict[str, Any]]:
        """The c/<size> records of tree size >= from_size, in size order, at most `limit` (<= MAX_FIND)."""
        limit = min(_count(limit, "limit"), MAX_FIND)
        found: list[dict[str, Any]] = []
        async for _, raw in state.range(*checkpoints_from(_count(from_size, "from_size"))):
            if len(found) == limit:
                break
            found.append(load(raw))
        return found

    async def nodes(self, state: WorldState, pairs: Any) -> list[str]:
        if not isinstance(pairs, list):
            raise Refused("nodes takes a list of [level, index]")
        wanted = [(_count(p[0], "level"), _count(p[1], "index")) for p in pairs if isinstance(p, list) and len(p) == 2]
        if len(wanted) != len(pairs):
            raise Refused("nodes takes a list of [level, index]")
        try:
            found = await Tiles(state).nodes(wanted)
        except KeyError as exc:
            raise Refused(str(exc)) from None
        return [found[pair].hex() for pair in wanted]

    async def batches(self, state: WorldState, first: Any, last: Any) -> list[dict[str, Any]]:
        first, last = _count(first, "first"), _count(last, "last")
        found = []
        async for _, raw in state.range(*batches_from(first)):
            record = load(raw)
            if record["first_seq"] > last:
                break
            found.append(record)
        return found

    async def find(self, state: WorldState, entry_key: Any, order_id: Any, limit: Any) -> list[list[Any]]:
        limit = min(_count(limit, "limit"), MAX_FIND)
        hits: list[list[Any]] = []
        if isinstance(entry_key, str):
            for kind in policy.ENTRY_KINDS:
                if (raw := await state.get(entry_key_index(kind, entry_key))) is not None:
                    hits.append([load(raw)["seq"], kind])
        elif isinstance(order_id, str):
            # finance keys a reconciled sale "sale:<order id>:<business day>" (services/finance/ledger_commit.py)
            prefix = entry_key_index(policy.RECONCILED_SALE, f"sale:{order_id}:")
            async for _, raw in state.range(prefix, prefix + "\U0010ffff"):
                hits.append([load(raw)["seq"], policy.RECONCILED_SALE])
        else:
            raise Refused("find needs an entry_key or an order_id")
        return sorted(hits)[:limit]


class _Batch:
    """The writes of one append transaction: several signed batches over one head and one set of tiles."""

    def __init__(self, state: WorldState, head: Head, tiles: Tiles) -> None:
        self.state, self.head, self.tiles = state, head, tiles
        self.pending_keys: dict[tuple[str, str], tuple[Receipt, bytes]] = {}  # GetState does not see our puts
        self.wrote = False

    async def indexed(self, kind: str, key: str) -> tuple[Receipt, bytes] | None:
        if (kind, key) in self.pending_keys:
            return self.pending_keys[kind, key]
        raw = await self.state.get(entry_key_index(kind, key))
        if raw is None:
            return None
        value = load(raw)
        return Receipt(value["seq"], value["leaf"], value["batch_id"]), bytes.fromhex(value["leaf"])

    async def write(self, submission: signing.Submission, batch_root: bytes, entries: list[Any],
                    encoded: list[tuple[str, bytes]], keys: list[str | None], leaves: list[bytes]) -> list[Receipt]:
        head = self.head
        first, batch_id = head.size, head.next_batch
        last = first + len(leaves) - 1
        await self.state.put(batch_key(last), dump({
            "batch_id": batch_id, "org": submission.org, "first_seq": first, "last_seq": last,
            "timestamp": submission.timestamp, "batch_root": batch_root.hex(), "cert_pem": submission.cert_pem,
            "signature": submission.signature, "statement": signing.SUBMISSION, "entries": entries}))
        receipts = [Receipt(first + n, leaf.hex(), batch_id) for n, leaf in enumerate(leaves)]
        for (kind, _), key, receipt, leaf in zip(encoded, keys, receipts, leaves, strict=True):
            if key is not None:
                await self.state.put(entry_key_index(kind, key),
                                     dump({"seq": receipt.seq, "batch_id": batch_id, "leaf": receipt.leaf_hash}))
                self.pending_keys[kind, key] = (receipt, leaf)
        await self.tiles.add(head.frontier.extend(leaves))
        head.size, head.next_batch, head.batch_ts = head.frontier.size, batch_id + 1, submission.timestamp
        self.wrote = True
        return receipts


def _statement(record: Mapping[str, Any]) -> dict[str, Any]:
    # What ledger.signing.checkpoint_statement encodes, so dump() of it is those exact bytes.
    return {"kind": "checkpoint", "tree_size": record["tree_size"], "root_hash": record["root_hash"],
            "timestamp": record["timestamp"]}


def _count(value: Any, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Refused(f"{label} must be a non-negative integer")
    return value
