"""Fabric's Python shim (fabric-chaincode-python) in front of LedgerContract.

`LedgerChaincode` is the shim's Chaincode: `invoke` reads the function and arguments from the stub,
runs the contract over `PeerState` and answers success(result) or error(reason). A refusal of the
whole transaction is an error response (status 500), so no peer endorses it.

PeerState talks to the peer with the shim's own message queue rather than the stub's get_state /
put_state, because those hand back an ERROR message's text as if it were the stored value; here a
peer error raises. One request per transaction is in flight at a time (the shim queues them per
transaction, and Fabric 2.5's shim protocol has no multi-key read).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_chaincode_python.fabric_shim.msg_queue_handler import QueueMessage
from fabric_chaincode_python.fabric_shim.response import error, success
from fabric_protos.peer import chaincode_shim_pb2 as shim_pb
from fabric_protos.peer import proposal_response_pb2 as response_pb

from ledger import policy
from ledger.fabric.chaincode.contract import CHECKPOINT_EVENT, LedgerContract, Refused

_PAGE = 16  # a stored batch can hold thousands of entries: a page stays a few MiB


class PeerError(RuntimeError):
    """The peer answered a state request with an error."""


class PeerState:
    """WorldState over the shim's stub of one transaction."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub

    def creator(self) -> tuple[str, str]:
        creator = self.stub.get_creator()
        return str(creator.get("mspid", "")), bytes(creator.get("idBytes", b"")).decode("utf-8", "replace")

    def tx_timestamp(self) -> datetime:
        stamp = self.stub.get_tx_timestamp()
        if stamp is None:
            raise Refused("the proposal carries no timestamp")
        return stamp.ToDatetime(tzinfo=UTC)

    def tx_id(self) -> str:
        return str(self.stub.get_txid())

    async def _ask(self, kind: int, payload: bytes, action: str) -> shim_pb.ChaincodeMessage:
        message = shim_pb.ChaincodeMessage(type=kind, payload=payload, txid=self.stub.tx_id,
                                           channel_id=self.stub.channel_id)
        future: asyncio.Future[shim_pb.ChaincodeMessage] = asyncio.get_running_loop().create_future()
        await self.stub.client.msg_queue_handler.queue_msg(QueueMessage(message, action, future))
        answer = await future
        if answer.type == shim_pb.ChaincodeMessage.ERROR:
            raise PeerError(f"{action}: {answer.payload.decode('utf-8', 'replace')}")
        return answer

    async def get(self, key: str) -> bytes | None:
        answer = await self._ask(shim_pb.ChaincodeMessage.GET_STATE,
                                 shim_pb.GetState(key=key, collection="").SerializeToString(), "GetState")
        return answer.payload or None  # Fabric answers an absent key with an empty value

    async def put(self, key: str, value: bytes) -> None:
        await self._ask(shim_pb.ChaincodeMessage.PUT_STATE,
                        shim_pb.PutState(key=key, value=value, collection="").SerializeToString(), "PutState")

    async def range(self, start: str, end: str) -> AsyncIterator[tuple[str, bytes]]:
        from fabric_protos.ledger.queryresult import kv_query_result_pb2 as kv_pb

        metadata = shim_pb.QueryMetadata(pageSize=_PAGE).SerializeToString()
        answer = await self._ask(shim_pb.ChaincodeMessage.GET_STATE_BY_RANGE, shim_pb.GetStateByRange(
            startKey=start, endKey=end, collection="", metadata=metadata).SerializeToString(), "GetStateByRange")
        response = shim_pb.QueryResponse.FromString(answer.payload)
        try:
            while True:
                for result in response.results:
                    kv = kv_pb.KV.FromString(result.resultBytes)
                    yield kv.key, kv.value
                if not response.has_more:
                    break
                answer = await self._ask(shim_pb.ChaincodeMessage.QUERY_STATE_NEXT,
                                         shim_pb.QueryStateNext(id=response.id).SerializeToString(), "QueryStateNext")
                response = shim_pb.QueryResponse.FromString(answer.payload)
        finally:
            if response.has_more:  # stopped early: free the iterator the peer holds
                await self._ask(shim_pb.ChaincodeMessage.QUERY_STATE_CLOSE,
                                shim_pb.QueryStateClose(id=response.id).SerializeToString(), "QueryStateClose")


class LedgerChaincode(Chaincode):
    def __init__(self, contract: LedgerContract) -> None:
        self.contract = contract

    async def init(self, stub: Any) -> response_pb.Response:  # type: ignore[override]
        return success(b"")  # _lifecycle without --init-required never calls it; nothing to set up

    async def invoke(self, stub: Any) -> response_pb.Response:  # type: ignore[override]
        try:
            function, args = stub.get_function_and_parameters()
            result = await self.contract.invoke(PeerState(stub), function, list(args))
            if function == "checkpoint":  # clients following the log hear of each checkpoint (Gateway ChaincodeEvents)
                stub.set_event(CHECKPOINT_EVENT, result)
            return success(result)
        except (Refused, ValueError, policy.PermissionDenied, PeerError) as exc:
            return error(f"{type(exc).__name__}: {exc}")
