"""RFC 9162 Merkle tree hashing, incremental appends, proofs and their verifiers.

Hashes (RFC 9162 section 2.1.1): leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right),
the empty tree's root is SHA-256(""). Leaf index = ledger seq, starting at 0.

Storage model. A store keeps the hash of every *perfect* subtree once it is complete: node
(level L, index i) covers leaves [i * 2**L, (i + 1) * 2**L); level 0 holds the leaf hashes. Such a
node never changes once written, so the store is append-only like the log. `Frontier.append`
reports exactly the nodes an append completes (the leaf plus one per carry, O(log n)), which a
backend inserts in the same transaction as the entry. Every subtree a proof needs is either
perfect (one lookup) or a right edge made of at most log2(n) perfect ones, so each proof costs
O(log^2 n) hashes and lookups and never touches the whole tree. `inclusion_proof_nodes` /
`consistency_proof_nodes` list the nodes a proof reads, so a backend can fetch them in one query.
"""

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

GetNode = Callable[[int, int], bytes]
"""get_node(level, index) -> the stored hash of that complete perfect subtree."""


class Node(NamedTuple):
    level: int
    index: int
    hash: bytes


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): where RFC 9162 splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    # Perfect subtrees listed left to right, strictly decreasing in size, hash together right-first:
    # that is exactly how RFC 9162's "split at the largest power of two" shapes a tree's right edge.
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def decomposition(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees (level, index) that make up a tree of `size` leaves, largest first."""
    nodes, offset = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            nodes.append((level, offset >> level))
            offset += 1 << level
    return nodes


@dataclass
class Frontier:
    """Roots of the perfect subtrees that make up a tree of `size` leaves, largest first.

    It is the only state an append needs: O(log n) hashes, and the root for the current size.
    """

    size: int = 0
    stack: list[tuple[int, bytes]] = field(default_factory=list)  # (level, hash), levels decreasing

    @classmethod
    def from_store(cls, size: int, get_node: GetNode) -> "Frontier":
        """Rebuild the frontier of a stored tree of `size` leaves (e.g. when a backend starts)."""
        return cls(size, [(level, get_node(level, index)) for level, index in decomposition(size)])

    def append(self, leaf: bytes) -> list[Node]:
        """Append one leaf hash; return the nodes it completed (the leaf itself first)."""
        index = self.size
        created = [Node(0, index, leaf)]
        level, current = 0, leaf
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            current = node_hash(left, current)
            level += 1
            index >>= 1
            created.append(Node(level, index, current))
        self.stack.append((level, current))
        self.size += 1
        return created

    def extend(self, leaves: Iterable[bytes]) -> list[Node]:
        created: list[Node] = []
        for leaf in leaves:
            created.extend(self.append(leaf))
        return created

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        return _fold_right([digest for _, digest in self.stack])

    def copy(self) -> "Frontier":
        return Frontier(self.size, list(self.stack))


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """RFC 9162 MTH over already-hashed leaves (e.g. the root of one append batch), level by level:
    pairing left to right and carrying an odd last node up unchanged builds exactly the tree that
    "split at the largest power of two" builds (about 3x faster than a Frontier per leaf; the submitter
    and the ledger both compute it for every batch)."""
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    while len(level) > 1:
        paired = [sha256(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)]
        level = paired + [level[-1]] if len(level) & 1 else paired
    return level[0]


def subtree_hash(start: int, end: int, get_node: GetNode) -> bytes:
    """MTH of leaves [start, end) from stored perfect subtrees, O(log n) lookups.

    Only ranges that RFC 9162's recursion produces are valid: start is a multiple of the smallest
    power of two >= end - start. Then the range is a left-to-right run of aligned perfect subtrees.
    """
    length = end - start
    if length <= 0 or start % (1 << (length - 1).bit_length()):
        raise ValueError(f"[{start}, {end}) is not a subtree of an RFC 9162 tree")
    parts: list[bytes] = []
    while length:
        level = length.bit_length() - 1
        parts.append(get_node(level, start >> level))
        start += 1 << level
        length -= 1 << level
    return _fold_right(parts)


def inclusion_proof(index: int, size: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 PATH(index, D[size]): sibling hashes from the leaf up to the root."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    proof: list[bytes] = []
    start, end = 0, size
    # Walk from the root down (the recursion of RFC 9162 2.1.3.1), then reverse: PATH lists the
    # deepest sibling first.
    while end - start > 1:
        k = _split_point(end - start)
        if index < start + k:
            proof.append(subtree_hash(start + k, end, get_node))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k, get_node))
            start += k
    proof.reverse()
    return proof


def consistency_proof(first: int, second: int, get_node: GetNode) -> list[bytes]:
    """RFC 9162 PROOF(first, D[second]); empty when first == second or first == 0."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first in (0, second):
        return []
    proof: list[bytes] = []
    start, end = 0, second
    whole_old_tree = True  # SUBPROOF's flag b: the old tree is still the left edge of this subtree
    while True:  # SUBPROOF(m, D[start:end], b) of RFC 9162 2.1.4.1, unrolled
        if first == end:
            if not whole_old_tree:
                proof.append(subtree_hash(start, end, get_node))
            break
        k = _split_point(end - start)
        if first <= start + k:
            proof.append(subtree_hash(start + k, end, get_node))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k, get_node))
            start += k
            whole_old_tree = False
    proof.reverse()
    return proof


def _nodes_read(build: Callable[[GetNode], object]) -> list[tuple[int, int]]:
    # Run the real proof builder against a recording store, so the list can never drift from it.
    read: list[tuple[int, int]] = []

    def record(level: int, index: int) -> bytes:
        read.append((level, index))
        return bytes(HASH_SIZE)

    build(record)
    return list(dict.fromkeys(read))


def inclusion_proof_nodes(index: int, size: int) -> list[tuple[int, int]]:
    """The (level, index) nodes inclusion_proof(index, size, ...) reads, for one batched fetch."""
    return _nodes_read(lambda get: inclusion_proof(index, size, get))


def consistency_proof_nodes(first: int, second: int) -> list[tuple[int, int]]:
    """The (level, index) nodes consistency_proof(first, second, ...) reads."""
    return _nodes_read(lambda get: consistency_proof(first, second, get))


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, step by step."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn = index, size - 1
    result = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(p, result)
            # fn == sn with fn even: on the tree's ragged right edge this subtree has no right
            # sibling for a few levels, so climb them without hashing.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root_hash


def verify_consistency(first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes) -> bool:
    """RFC 9162 section 2.1.4.2, step by step (plus the trivial cases the RFC leaves aside)."""
    if not 0 <= first <= second or any(len(p) != HASH_SIZE for p in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:  # every tree extends the empty one; the proof is empty by definition
        return not proof and first_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # first is a power of two: its root is a node of the new tree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


class MemoryNodeStore:
    """Complete-subtree hashes in a dict: the in-memory stand-in for a backend's node table."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.frontier = Frontier()

    def append(self, leaf: bytes) -> list[Node]:
        created = self.frontier.append(leaf)
        for node in created:
            self.nodes[node.level, node.index] = node.hash
        return created

    def get_node(self, level: int, index: int) -> bytes:
        return self.nodes[level, index]

    @property
    def size(self) -> int:
        return self.frontier.size

    def root(self) -> bytes:
        return self.frontier.root()
