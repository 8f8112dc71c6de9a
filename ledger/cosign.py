"""A co-signature of the newest checkpoint, made where the co-signing organisation runs (finance's
service, every few seconds, or `omnistock ledger cosign`), stored through the port.

A co-signature is worth what the co-signer checked before signing. Finance signs a checkpoint only if
1. the ledger's signature on it verifies with a certificate finance's trust store accepts, and
2. it extends the last checkpoint finance co-signed: an RFC 9162 consistency proof between the two,
   checked against both signed roots, and its time is no earlier. The last one is what this process
   co-signed (kept in memory), or else the latest the log shows with finance's signature, which must
   verify as finance's own. The very first co-signature has nothing to extend (trust on first use).
So once finance has co-signed a tree, a ledger that rewrites or forks history cannot get finance's
signature again; auditors holding any two co-signed checkpoints know the log only grew between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger import merkle, policy, signing
from ledger.encoding import parse_timestamp
from ledger.identity import Identity, TrustCache
from ledger.port import Json, Ledger


class CosignRefused(Exception):
    """The newest checkpoint must not be co-signed; the message says what is wrong (an alarm, not a retry)."""


@dataclass
class Cosigner:
    ledger: Ledger
    identity: Identity
    trust: TrustCache
    last: Json | None = None  # the last checkpoint this process co-signed

    async def cosign_latest(self) -> Json | None:
        """Co-sign the newest checkpoint if it is not yet; return it (None: the log has none)."""
        latest = await self.ledger.checkpoint()
        if latest is None:
            return None
        if self._signed_by_me(latest):
            self.last = _newer(self.last, latest)
            return latest
        self._check_ledger_signature(latest)
        previous = _newer(self.last, await self._last_cosigned_in_log())
        if previous is not None:
            await self._check_extends(previous, latest)
        stored = await self.ledger.cosign(latest["tree_size"], signing.checkpoint_signature(latest, self.identity))
        self.last = _newer(self.last, stored)
        return stored

    def _signed_by_me(self, checkpoint: Json) -> bool:
        return any(s["org"] == self.identity.org and s["cert_pem"] == self.identity.cert_pem
                   for s in checkpoint["signatures"])

    def _check_signatures_of(self, checkpoint: Json, org: str) -> int:
        """Verify every signature of `org` on the checkpoint; how many there were. SignatureRefused if one fails."""
        statement, found = _statement(checkpoint), 0
        for sig in checkpoint["signatures"]:
            if sig["org"] == org:
                signing.check_signature(self.trust.current(), sig["org"], sig["cert_pem"], statement,
                                        sig["signature"], parse_timestamp(checkpoint["timestamp"]))
                found += 1
        return found

    def _check_ledger_signature(self, checkpoint: Json) -> None:
        try:
            found = self._check_signatures_of(checkpoint, policy.CHECKPOINT_SIGNER)
        except signing.SignatureRefused as exc:
            raise CosignRefused(f"checkpoint of size {checkpoint['tree_size']}: the ledger's signature: "
                                f"{exc}") from None
        if not found:
            raise CosignRefused(f"checkpoint of size {checkpoint['tree_size']} carries no signature of the ledger")

    async def _last_cosigned_in_log(self) -> Json | None:
        found = await self.ledger.latest_cosigned(self.identity.org)
        if found is None:
            return None
        try:
            self._check_signatures_of(found, self.identity.org)
        except signing.SignatureRefused as exc:
            raise CosignRefused(f"the log shows our co-signature on the checkpoint of size "
                                f"{found['tree_size']}, and it is not ours: {exc}") from None
        return found

    async def _check_extends(self, previous: Json, latest: Json) -> None:
        old, new = previous["tree_size"], latest["tree_size"]
        if new < old or latest["timestamp"] < previous["timestamp"]:
            raise CosignRefused(f"checkpoint of size {new} ({latest['timestamp']}) is older than the one of size "
                                f"{old} ({previous['timestamp']}) co-signed before")
        proof = await self.ledger.consistency(old, new)
        old_root, new_root = bytes.fromhex(previous["root_hash"]), bytes.fromhex(latest["root_hash"])
        if (proof["first_root"], proof["second_root"]) != (previous["root_hash"], latest["root_hash"]) or \
                not merkle.verify_consistency(old, new, [bytes.fromhex(h) for h in proof["proof"]], old_root, new_root):
            raise CosignRefused(f"checkpoint of size {new} does not extend the checkpoint of size {old} co-signed "
                                "before: the log was rewritten")


def _statement(checkpoint: Json) -> bytes:
    return signing.checkpoint_statement(checkpoint["tree_size"], bytes.fromhex(checkpoint["root_hash"]),
                                        checkpoint["timestamp"])


def _newer(a: Json | None, b: Json | None) -> Json | None:
    if a is None or b is None:
        return a or b
    return b if b["tree_size"] >= a["tree_size"] else a
