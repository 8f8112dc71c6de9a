"""The ledger's problems (shared/errors.py hierarchy): what a refused submission or co-signature, or an
export that must wait for a co-signature, answers. Every one of them leaves the log unchanged."""

from __future__ import annotations

from shared.errors import Conflict, Forbidden, Problem


class UnsignedBatch(Problem):
    status, code, title = 422, "unsigned-batch", "Entries must come with their submitter's signature"


class BadBatchSignature(Problem):
    status, code, title = 422, "bad-signature", "The signature does not verify over what was sent"


class UntrustedSigner(Problem):
    status, code, title = 422, "untrusted-signer", "The signing certificate is not trusted (CA, validity, revocation)"


class SignatureTimestampRefused(Problem):
    status, code, title = 422, "signature-timestamp-refused", "The signed timestamp is too far from the ledger's clock"


class SignerNotAllowed(Forbidden):
    code, title = "signer-not-allowed", "The ledger policy does not let the signer's organisation do this"


class StaleSignature(Conflict):
    code, title = "stale-signature", "Signed too long ago, or before the log's latest batch: sign again"


class EntriesAlreadyInLog(Conflict):
    code, title = "entries-already-in-log", "Some entries are in the log already: submit the others, signed again"


class CheckpointNotCosigned(Conflict):
    code, title = "checkpoint-not-cosigned", "No checkpoint signed by every organisation covers this range yet"
