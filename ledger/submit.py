"""The submitter's side of an append, where the submitting organisation runs: sign the entries with
its own member key and hand them to the port; signed just before another batch landed (the log's
times never go back, ledger.port.StaleSignature), sign again with a fresh timestamp."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ledger.identity import Identity
from ledger.signing import StaleSignature, Submission, sign_submission

RESIGN_ATTEMPTS = 5


class Appender(Protocol):
    async def append(self, entries: Sequence[Mapping[str, Any]], submission: Submission) -> Any: ...


async def sign_and_append(ledger: Appender, signer: Identity, entries: Sequence[Mapping[str, Any]],
                          attempts: int = RESIGN_ATTEMPTS) -> Any:
    """ledger.append(entries, signed by `signer`); StaleSignature only if every attempt was overtaken."""
    for attempt in range(attempts):
        try:
            return await ledger.append(entries, sign_submission(signer, entries))
        except StaleSignature:
            if attempt == attempts - 1:
                raise
    raise ValueError("attempts must be at least 1")
