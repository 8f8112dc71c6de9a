"""How the chaincode says why it refused, and what the client makes of it: the same exceptions of
ledger.port, ledger.signing and ledger.policy that the embedded backend raises.

A batch refused inside an append transaction is {"refused": <type>, "message", "existing"}; a whole
transaction refused is an error response whose message is "<ExceptionName>: <reason>".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger import policy, signing
from ledger.port import AlreadyAppended, BadRange, DuplicateEntryKey, Receipt

# A refused group names its reason by one of these types; the client raises the same classes.
REFUSALS: tuple[tuple[str, type[Exception]], ...] = (
    ("permission_denied", policy.PermissionDenied),
    ("duplicate_entry_key", DuplicateEntryKey),
    ("already_appended", AlreadyAppended),
    ("stale_signature", signing.StaleSignature),
    ("timestamp_refused", signing.TimestampRefused),
    ("untrusted_signer", signing.UntrustedSigner),
    ("bad_signature", signing.BadSignature),
    ("invalid", ValueError),  # last: the classes above are ValueErrors too
)


def refusal_type(exc: Exception) -> str:
    return next(name for name, cls in REFUSALS if isinstance(exc, cls))


def refusal(result: Mapping[str, Any]) -> Exception:
    """The exception of ledger.port that a batch refused by the chaincode stands for."""
    kind, message = result["refused"], result["message"]
    existing = {int(p): Receipt(*r) for p, r in result.get("existing", {}).items()}
    if kind == "permission_denied":
        return _denied(message)
    cls = dict(REFUSALS).get(kind, ValueError)
    if cls in (DuplicateEntryKey, AlreadyAppended):
        return cls(message, existing)  # type: ignore[call-arg]
    return cls(message)


def whole_refusal(message: str) -> Exception:
    """A whole transaction refused: the chaincode's message is "<ExceptionName>: <reason>"."""
    name, _, reason = message.partition(": ")
    if name == "PermissionDenied":
        return _denied(reason)
    if name in ("Refused", "ValueError"):
        return BadRange(reason) if "not in the log" in reason or "empty" in reason else ValueError(reason)
    from ledger.fabric.gateway import ChaincodeRefused

    return ChaincodeRefused(message)


def _denied(message: str) -> policy.PermissionDenied:
    principal, _, rest = message.partition(" may not ")
    action, _, detail = rest.partition(": ")
    return policy.PermissionDenied(principal, action or "append", detail or message)


