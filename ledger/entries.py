"""Pure rules of an append shared by every backend: what a well-formed entry is, and what an append
whose entry keys are already in the log means (the same entries again, a mix, or other content).

An entry is a JSON object with a string "kind" and a canonical encoding (ledger.encoding); an optional
"entry_key" (1 to MAX_ENTRY_KEY characters) is unique per kind in the whole log. The embedded backend
and the Fabric chaincode both call these, so the two logs refuse and accept exactly the same appends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ledger.encoding import canonical_bytes
from ledger.port import AlreadyAppended, DuplicateEntryKey, Entry, Receipt

MAX_ENTRY_KEY = 200
EntryKey = tuple[str, str]  # (kind, entry_key)


def encode_entries(entries: Sequence[Entry]) -> list[tuple[str, bytes]]:
    """(kind, canonical bytes) of each entry; ValueError for a malformed one."""
    encoded = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
            raise ValueError(f"entries[{position}] must be an object with a string 'kind'")
        encoded.append((entry["kind"], canonical_bytes(dict(entry))))
    return encoded


def entry_key_of(entry: Entry, position: int) -> str | None:
    key = entry.get("entry_key")
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_ENTRY_KEY:
        raise ValueError(f"entries[{position}].entry_key must be a string of 1 to {MAX_ENTRY_KEY} characters")
    return key


def keys_in_append(kinds: Sequence[str], keys: Sequence[str | None]) -> dict[EntryKey, int]:
    """(kind, entry_key) -> position for the keyed entries of one append; a key repeated inside one
    append is a ValueError (signed twice and stored once, the batch could never verify)."""
    first_in_append: dict[EntryKey, int] = {}
    for position, (kind, key) in enumerate(zip(kinds, keys, strict=True)):
        if key is None:
            continue
        if (earlier := first_in_append.setdefault((kind, key), position)) != position:
            raise ValueError(f"entries[{position}] repeats the entry_key of entries[{earlier}]")
    return first_in_append


def known_receipts(first_in_append: Mapping[EntryKey, int],
                   stored: Mapping[EntryKey, tuple[Receipt, bool]]) -> dict[int, Receipt]:
    """Receipts, by position, of the entries the log holds already with the same content. `stored` has,
    for each key of the append found in the log, its receipt and whether the content is the same.
    Other content under a stored key raises DuplicateEntryKey."""
    known: dict[int, Receipt] = {}
    conflicts: dict[int, Receipt] = {}
    for key, position in first_in_append.items():
        if (found := stored.get(key)) is None:
            continue
        receipt, same = found
        (known if same else conflicts)[position] = receipt
    if conflicts:
        raise DuplicateEntryKey(
            f"entry_key already in the log with other content at entries {sorted(conflicts)}", conflicts)
    return known


def receipts_if_all_known(known: Mapping[int, Receipt], count: int) -> list[Receipt] | None:
    """Every entry of the append is in the log already: their receipts (write nothing). None of them:
    None (append). Some: AlreadyAppended, since the signature covers all of them."""
    if len(known) == count:
        return [known[i] for i in range(count)]
    if known:
        raise AlreadyAppended(f"entries {sorted(known)} are in the log already; submit the others, signed "
                              "again", dict(known))
    return None
