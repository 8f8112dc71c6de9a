"""The Fabric backend's audit of its checkpoints: every one the log ever recorded, not only the latest.

The whole-log bundle (FabricLedger.audit) proves every entry against the newest checkpoint; this walks
the c/ records of world state in size order and checks each one's endorsements with the offline
verifier's rules, that they are dated in order, and that each extends the one before (RFC 9162
consistency), so no checkpoint the organisations endorsed is contradicted by the log as it is now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import merkle
from ledger import verify as verifier
from ledger.identity import TrustStore
from ledger.port import Json
from ledger.verify import VerificationReport

if TYPE_CHECKING:
    from ledger.fabric.backend import FabricLedger


async def audit_checkpoints(ledger: FabricLedger, size: int, trust: TrustStore, report: VerificationReport) -> None:
    """Every earlier checkpoint: endorsed as the verifier requires, dated in order, and extended by
    the next one (RFC 9162 consistency), so no checkpoint ever signed is contradicted by the log."""
    records: list[Json] = []
    while batch := await ledger.evaluate("checkpoints", records[-1]["tree_size"] + 1 if records else 1, 1000):
        records += batch
    previous: Json | None = None
    for record in records:
        if record["tree_size"] > size:
            break
        checkpoint = await ledger.with_signatures(record)
        label = f"checkpoint of size {checkpoint['tree_size']}"
        signers = report.checkpoint_signers
        failures = len(report.failures)
        verifier.check_checkpoint(checkpoint, label, trust, report, tuple(ledger.settings.endorsers))
        report.checkpoint_signers = signers
        if previous is not None:
            if checkpoint["timestamp"] < previous["timestamp"]:
                report.fail(f"{label} is dated before the checkpoint preceding it")
            first, second = previous["tree_size"], checkpoint["tree_size"]
            nodes = await ledger.read_nodes(merkle.consistency_proof_nodes(first, second))
            proof = merkle.consistency_proof(first, second, lambda level, index, found=nodes: found[level, index])
            if not merkle.verify_consistency(first, second, proof, bytes.fromhex(previous["root_hash"]),
                                             bytes.fromhex(checkpoint["root_hash"])):
                report.fail(f"{label} does not extend the checkpoint of size {first}")
        if len(report.failures) == failures:
            previous = checkpoint


