"""The Merkle tree and its proofs against a naive RFC 9162 section 2.1 implementation written here.

The naive side is a transcription of the RFC's recursive definitions (MTH, PATH, PROOF, SUBPROOF)
over the raw leaf data, sharing no code with ledger.merkle; only its MTH is memoised, by leaf range,
so checking every size and index stays fast.
"""

import hashlib
import random
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import merkle

MAX_SIZE = 300
DATA = [f"entry {i}".encode() * (i % 5 + 1) for i in range(MAX_SIZE)]


# --- naive RFC 9162 (section 2.1) -------------------------------------------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@cache
def mth(start: int, end: int) -> bytes:
    n = end - start
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + DATA[start]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + mth(start, start + k) + mth(start + k, end)).digest()


def path(m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return path(m, start, start + k) + [mth(start + k, end)]
    return path(m - k, start + k, end) + [mth(start, start + k)]


def proof(m: int, n: int) -> list[bytes]:
    return subproof(m, 0, n, True)


def subproof(m: int, start: int, end: int, b: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if b else [mth(start, end)]
    k = _k(n)
    if m <= k:
        return subproof(m, start, start + k, b) + [mth(start + k, end)]
    return subproof(m - k, start + k, end, False) + [mth(start, start + k)]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> merkle.MemoryNodeStore:
    store = merkle.MemoryNodeStore()
    for data in DATA:
        store.append(merkle.leaf_hash(data))
    return store


def getter_for_size(store: merkle.MemoryNodeStore, size: int) -> merkle.GetNode:
    """A node getter that fails if a proof for `size` reads a node the tree did not have yet."""

    def get(level: int, index: int) -> bytes:
        assert (index + 1) << level <= size, f"node ({level}, {index}) did not exist at size {size}"
        return store.get_node(level, index)

    return get


def flip(h: bytes, bit: int = 0) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- roots and the frontier -------------------------------------------------------------------


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert merkle.root([]) == merkle.EMPTY_ROOT == mth(0, 0)
    assert merkle.Frontier().root() == merkle.EMPTY_ROOT


def test_frontier_root_matches_naive_root_for_every_size() -> None:
    frontier = merkle.Frontier()
    for size in range(1, MAX_SIZE + 1):
        frontier.append(merkle.leaf_hash(DATA[size - 1]))
        assert frontier.root() == mth(0, size), size
        assert merkle.root([merkle.leaf_hash(d) for d in DATA[:size]]) == mth(0, size)


def test_append_reports_exactly_the_perfect_subtrees_it_completes(store: merkle.MemoryNodeStore) -> None:
    expected = {
        (level, index): mth(index << level, (index + 1) << level)
        for level in range(MAX_SIZE.bit_length())
        for index in range(MAX_SIZE >> level)
    }
    assert store.nodes == expected
    frontier = merkle.Frontier()
    for size in range(1, 65):
        created = frontier.append(merkle.leaf_hash(DATA[size - 1]))
        # one node per trailing 1-bit of the old size, plus the leaf: O(log n) per append
        assert len(created) == ((size - 1) ^ size).bit_length()


def test_frontier_rebuilt_from_store_continues_like_the_original(store: merkle.MemoryNodeStore) -> None:
    for size in (0, 1, 2, 3, 7, 8, 100, 255, 256, 299):
        frontier = merkle.Frontier.from_store(size, getter_for_size(store, size))
        assert frontier.root() == mth(0, size)
        frontier.append(merkle.leaf_hash(DATA[size]))
        assert frontier.root() == mth(0, size + 1)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"ab") == hashlib.sha256(b"\x00ab").digest()
    assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


# --- inclusion --------------------------------------------------------------------------------


def test_inclusion_proofs_match_naive_path_for_every_size_and_index(store: merkle.MemoryNodeStore) -> None:
    for size in range(1, MAX_SIZE + 1):
        get = getter_for_size(store, size)
        root = mth(0, size)
        for index in range(size):
            got = merkle.inclusion_proof(index, size, get)
            assert got == path(index, 0, size), (index, size)
            assert merkle.verify_inclusion(mth(index, index + 1), index, size, got, root), (index, size)


def test_inclusion_verifier_rejects_mutated_proofs(store: merkle.MemoryNodeStore) -> None:
    rng = random.Random(9162)
    for size in range(1, 80):
        root = mth(0, size)
        for index in range(size):
            leaf = mth(index, index + 1)
            good = path(index, 0, size)
            rejected = [
                (flip(leaf), index, size, good, root),
                (leaf, index, size, good, flip(root)),
                (leaf, index, size, good + [root], root),
                (leaf, index, size, [*good, bytes(32)], root),
                (leaf, size, size, good, root),
                (leaf, -1, size, good, root),
            ]
            if good:
                position = rng.randrange(len(good))
                mutated = list(good)
                mutated[position] = flip(mutated[position], rng.randrange(8))
                rejected += [(leaf, index, size, mutated, root), (leaf, index, size, good[:-1], root)]
                rejected.append((leaf, index, size, good[:-1] + [good[-1][:31]], root))
            # Another size is not in this list on purpose: the proof cannot tell a leaf of tree n from
            # a leaf of a tree whose last "leaf" is a subtree hash; sizes are bound by the signed checkpoint.
            if size > 1:
                rejected.append((leaf, (index + 1) % size, size, good, root))
            for case in rejected:
                assert not merkle.verify_inclusion(*case), (case[1], case[2])


def test_inclusion_proof_refuses_an_index_outside_the_tree(store: merkle.MemoryNodeStore) -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof(5, 5, store.get_node)


def test_inclusion_proof_nodes_lists_what_the_proof_reads(store: merkle.MemoryNodeStore) -> None:
    for size, index in ((1, 0), (7, 3), (300, 0), (300, 299), (257, 256), (100, 37)):
        wanted = merkle.inclusion_proof_nodes(index, size)
        fetched = {node: store.get_node(*node) for node in wanted}
        assert merkle.inclusion_proof(index, size, lambda lvl, idx, fetched=fetched: fetched[lvl, idx]) == path(
            index, 0, size
        )
        assert len(wanted) <= size.bit_length() ** 2


# --- consistency ------------------------------------------------------------------------------


def consistency_pairs() -> list[tuple[int, int]]:
    pairs = [(m, n) for n in range(1, 101) for m in range(1, n + 1)]
    rng = random.Random(2)
    pairs += [(rng.randint(1, n), n) for n in range(101, MAX_SIZE + 1) for _ in range(12)]
    pairs += [(m, MAX_SIZE) for m in (1, 2, 64, 128, 255, 256, 257, 299, 300)]
    return pairs


def test_consistency_proofs_match_naive_proof(store: merkle.MemoryNodeStore) -> None:
    for m, n in consistency_pairs():
        got = merkle.consistency_proof(m, n, getter_for_size(store, n))
        assert got == proof(m, n), (m, n)
        assert merkle.verify_consistency(m, n, got, mth(0, m), mth(0, n)), (m, n)


def test_consistency_verifier_rejects_mutated_proofs() -> None:
    rng = random.Random(6962)
    for m, n in consistency_pairs()[::7]:
        good = proof(m, n)
        old, new = mth(0, m), mth(0, n)
        rejected = [(m, n, good, flip(old), new), (m, n, good, old, flip(new)), (m, n, good + [old], old, new)]
        if good:
            position = rng.randrange(len(good))
            mutated = list(good)
            mutated[position] = flip(mutated[position], rng.randrange(8))
            rejected += [(m, n, mutated, old, new), (m, n, good[:-1], old, new), (m, n, good[1:], old, new)]
        if m < n:
            rejected += [(m, n, [], old, new), (m, n, good, new, old)]
            rejected.append((n, m, good, new, old))
        for case in rejected:
            assert not merkle.verify_consistency(*case), (case[0], case[1])


def test_trivial_consistency_cases() -> None:
    assert merkle.consistency_proof(0, 5, lambda lvl, idx: b"") == []
    assert merkle.consistency_proof(5, 5, lambda lvl, idx: b"") == []
    assert merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, mth(0, 5))
    assert merkle.verify_consistency(5, 5, [], mth(0, 5), mth(0, 5))
    assert not merkle.verify_consistency(5, 5, [], mth(0, 5), mth(0, 4))
    assert not merkle.verify_consistency(0, 5, [], mth(0, 1), mth(0, 5))
    with pytest.raises(ValueError):
        merkle.consistency_proof(6, 5, lambda lvl, idx: b"")


def test_consistency_proof_nodes_lists_what_the_proof_reads(store: merkle.MemoryNodeStore) -> None:
    for m, n in ((1, 300), (7, 9), (128, 300), (299, 300), (100, 257)):
        fetched = {node: store.get_node(*node) for node in merkle.consistency_proof_nodes(m, n)}
        assert merkle.consistency_proof(m, n, lambda lvl, idx, fetched=fetched: fetched[lvl, idx]) == proof(m, n)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70), st.data())
def test_random_trees_agree_with_their_own_naive_root(leaves: list[bytes], data: st.DataObject) -> None:
    def naive(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return hashlib.sha256(b"\x00" + items[0]).digest()
        k = _k(len(items))
        return hashlib.sha256(b"\x01" + naive(items[:k]) + naive(items[k:])).digest()

    store = merkle.MemoryNodeStore()
    for leaf in leaves:
        store.append(merkle.leaf_hash(leaf))
    assert store.root() == naive(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    first = data.draw(st.integers(1, len(leaves)))
    assert merkle.verify_inclusion(
        merkle.leaf_hash(leaves[index]),
        index,
        len(leaves),
        merkle.inclusion_proof(index, len(leaves), store.get_node),
        naive(leaves),
    )
    consistency = merkle.consistency_proof(first, len(leaves), store.get_node)
    assert merkle.verify_consistency(first, len(leaves), consistency, naive(leaves[:first]), naive(leaves))
