"""The ledger's world state on Fabric: key layout, the log's head, and the tree nodes in tiles.

Keys (every value is canonical JSON unless said otherwise):

    head                      {"size", "next_batch", "frontier": [[level, hex]], "batch_ts", "checkpoint"}
    b/<last_seq:016d>         one signed batch: {"batch_id", "org", "first_seq", "last_seq", "timestamp",
                              "batch_root", "cert_pem", "signature", "statement", "entries": [...]}; keyed by
                              its last seq, so the batch holding seq s is the first key >= b/<s> (entries by seq)
    k/<kind>/<entry_key>      {"seq", "batch_id", "leaf"}: the entry_key index (written once)
    t/<level:02d>/<tile:012d> raw bytes: the hashes of complete perfect subtrees (level, index) for index in
                              tile*256 .. tile*256+255, 32 bytes each, in index order; level 0 = leaf hashes
    c/<tree_size:016d>        {"tree_size", "root_hash", "timestamp", "txid"}: a checkpoint and the
                              transaction whose endorsements sign it

Every value but a tile's is written once. A tile only grows: a hash, once there, never changes (the
nodes of ledger.merkle are append-only), so rewriting a partial tile with more hashes after it is an
append. Tiles make an append of B entries O(B / 256 + log n) writes instead of one per node, and the
frontier in `head` (O(log n) hashes) is all an append reads of the tree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from ledger import merkle
from ledger.encoding import canonical_bytes

HEAD = "head"
TILE_WIDTH = 256
_TILE_SHIFT = 8  # log2(TILE_WIDTH)
_RANGE_END = "~"  # sorts after every digit, so b/<n> .. b/~ is every batch from n on


class WorldState(Protocol):
    """What the contract needs of a peer during one transaction (ledger.fabric.chaincode.shim wraps
    Fabric's stub in it). Like Fabric's GetState, `get` does not see this transaction's own puts."""

    def creator(self) -> tuple[str, str]: ...  # (MSP id, certificate PEM) of the transaction's creator
    def tx_timestamp(self) -> datetime: ...  # the proposal's timestamp: the same on every endorser
    def tx_id(self) -> str: ...
    async def get(self, key: str) -> bytes | None: ...
    async def put(self, key: str, value: bytes) -> None: ...
    def range(self, start: str, end: str) -> AsyncIterator[tuple[str, bytes]]: ...


def batch_key(last_seq: int) -> str:
    return f"b/{last_seq:016d}"


def batches_from(seq: int) -> tuple[str, str]:
    return batch_key(seq), "b/" + _RANGE_END


def entry_key_index(kind: str, entry_key: str) -> str:
    return f"k/{kind}/{entry_key}"


def checkpoint_key(tree_size: int) -> str:
    return f"c/{tree_size:016d}"


def checkpoints_from(tree_size: int) -> tuple[str, str]:
    return checkpoint_key(tree_size), "c/" + _RANGE_END


def tile_key(level: int, tile: int) -> str:
    return f"t/{level:02d}/{tile:012d}"


def dump(value: Any) -> bytes:
    return canonical_bytes(value)


def load(raw: bytes) -> Any:
    return orjson.loads(raw)


@dataclass
class Head:
    size: int = 0
    next_batch: int = 0
    frontier: merkle.Frontier = field(default_factory=merkle.Frontier)
    batch_ts: str | None = None  # the latest batch's signed timestamp: the log's times never go back
    checkpoint: dict[str, Any] | None = None  # the latest c/<size> value

    @classmethod
    async def read(cls, state: WorldState) -> Head:
        raw = await state.get(HEAD)
        if raw is None:
            return cls()
        value = load(raw)
        stack = [(int(level), bytes.fromhex(digest)) for level, digest in value["frontier"]]
        return cls(value["size"], value["next_batch"], merkle.Frontier(value["size"], stack), value["batch_ts"],
                   value["checkpoint"])

    def dump(self) -> bytes:
        return dump({"size": self.size, "next_batch": self.next_batch, "batch_ts": self.batch_ts,
                     "frontier": [[level, digest.hex()] for level, digest in self.frontier.stack],
                     "checkpoint": self.checkpoint})


class Tiles:
    """Tree nodes of one transaction: reads tiles lazily (once each), collects new nodes, writes each
    touched tile once at the end."""

    def __init__(self, state: WorldState) -> None:
        self.state = state
        self._tiles: dict[tuple[int, int], bytearray] = {}
        self._dirty: set[tuple[int, int]] = set()

    async def _tile(self, level: int, tile: int) -> bytearray:
        if (level, tile) not in self._tiles:
            self._tiles[level, tile] = bytearray(await self.state.get(tile_key(level, tile)) or b"")
        return self._tiles[level, tile]

    async def add(self, nodes: Iterable[merkle.Node]) -> None:
        for node in nodes:
            tile = await self._tile(node.level, node.index >> _TILE_SHIFT)
            offset = (node.index & (TILE_WIDTH - 1)) * merkle.HASH_SIZE
            # Nodes complete left to right on each level, so a new one always lands at the tile's end;
            # anything else would mean the head and the tiles disagree.
            if len(tile) != offset:
                raise RuntimeError(f"tree node ({node.level}, {node.index}) does not extend its tile")
            tile += node.hash
            self._dirty.add((node.level, node.index >> _TILE_SHIFT))

    async def flush(self) -> None:
        for level, tile in sorted(self._dirty):
            await self.state.put(tile_key(level, tile), bytes(self._tiles[level, tile]))
        self._dirty.clear()

    async def nodes(self, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored hashes of these (level, index) nodes; KeyError for one not complete yet."""
        found = {}
        for level, index in wanted:
            tile = await self._tile(level, index >> _TILE_SHIFT)
            offset = (index & (TILE_WIDTH - 1)) * merkle.HASH_SIZE
            if len(tile) < offset + merkle.HASH_SIZE:
                raise KeyError(f"tree node ({level}, {index}) is not in the log")
            found[level, index] = bytes(tile[offset:offset + merkle.HASH_SIZE])
        return found
