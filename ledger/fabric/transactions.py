"""One ledger transaction from proposal to commit, through the Gateway, as the Fabric backend sends it.

Endorse; if the chaincode's result is worth writing, Submit and wait for the commit status. A
transaction beaten to the log's head by another (MVCC_READ_CONFLICT) is endorsed anew; while the network
cannot endorse or order (a required peer down), each step is retried every `retry_s` until `timeout_s`.
Once endorsed, only that same signed transaction is ever submitted again: a repeat is a duplicate tx id,
never a second append.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ledger.fabric.gateway import RETRY_CODES, VALID, FabricUnavailable, Gateway, NotCommitted, Prepared
from shared.logging import get_logger

log = get_logger("omnistock.ledger.fabric")
# Endorsers disagreeing: right after a commit one peer may not have applied the block yet and simulates on
# the previous head. It has a moment later, so that is retried at once rather than after `retry_s`.
LAGGING_PEER = "ProposalResponsePayloads do not match"
LAG_RETRY_S = 0.02


async def until_committed(gateway: Gateway, function: str, args: Sequence[Any], *,
                          commit: Callable[[Any], bool] = lambda _: True, timeout_s: float = 300.0,
                          commit_timeout_s: float = 60.0, retry_s: float = 1.0) -> Prepared:
    """The prepared transaction of `function(*args)` (JSON arguments), committed VALID if `commit` says
    its result should be written; NotCommitted if the block refused it for any reason but a conflict."""
    deadline = time.monotonic() + timeout_s
    encoded = [json.dumps(a, separators=(",", ":"), ensure_ascii=False) for a in args]
    while True:
        prepared = await retrying(lambda: gateway.endorse(function, *encoded), deadline, retry_s)
        if not commit(json.loads(prepared.result)):
            return prepared  # nothing to write (every batch refused or known): no transaction
        await retrying(lambda ready=prepared: gateway.submit(ready), deadline, retry_s)
        code, _ = await retrying(lambda tx=prepared.tx_id: gateway.commit_status(tx, commit_timeout_s), deadline,
                                 retry_s)
        if code == VALID:
            return prepared
        if code not in RETRY_CODES:
            raise NotCommitted(prepared.tx_id, code)


async def retrying(call: Callable[[], Any], deadline: float, retry_s: float) -> Any:
    """await call(), again every `retry_s` while the network is unavailable, until `deadline`."""
    waited = False
    while True:
        try:
            result = await call()
        except FabricUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            lagging = LAGGING_PEER in str(exc)
            if not waited and not lagging:
                log.warning("Fabric network cannot endorse or order now; appends wait", reason=str(exc))
                waited = True
            await asyncio.sleep(LAG_RETRY_S if lagging else retry_s)
            continue
        if waited:
            log.info("Fabric network answers again; appends resume")
        return result
