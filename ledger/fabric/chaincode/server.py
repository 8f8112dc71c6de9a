"""The chaincode's gRPC server: the shim's Chaincode service and message handler, with three changes.

- Message size: the shim's server keeps gRPC's 4 MiB receive limit, but one transaction's arguments
  (thousands of signed entries) and a page of stored batches are larger; the peer itself allows 100 MiB,
  so this server does too.
- Its handler's receive loop formats every incoming message into log lines (f-strings, so the cost is
  paid even when the level drops them): a transaction's whole proposal and every state value; and it
  makes a task of each answer to a state request. The loop here has neither.
- It sends the transaction's chaincode event (the shim's own handler drops it).
"""

from __future__ import annotations

import asyncio
import datetime
import signal
from collections.abc import AsyncIterable
from typing import Any

import grpc
from fabric_chaincode_python.fabric_shim import handler as shim_handler
from fabric_chaincode_python.fabric_shim.interfaces import Chaincode
from fabric_chaincode_python.fabric_shim.msg_queue_handler import MsgQueueHandler
from fabric_chaincode_python.fabric_shim.server import load_tls_config
from fabric_chaincode_python.fabric_shim.stub import ChaincodeStub
from fabric_protos.peer import chaincode_pb2, proposal_response_pb2
from fabric_protos.peer import chaincode_shim_pb2 as shim_pb
from fabric_protos.peer import chaincode_shim_pb2_grpc as shim_grpc

MAX_MESSAGE = 100 * 2**20
_ANSWERS = (shim_pb.ChaincodeMessage.RESPONSE, shim_pb.ChaincodeMessage.ERROR)


class Handler(shim_handler.Handler):
    async def chat_with_peer(self, stream: AsyncIterable[shim_pb.ChaincodeMessage], context: Any) -> None:
        self.state = shim_handler.STATES.CREATED
        self.context = context
        self.msg_queue_handler = MsgQueueHandler(self)
        register = shim_pb.ChaincodeMessage(type=shim_pb.ChaincodeMessage.REGISTER,
                                            payload=self.chaincode_id.SerializeToString())
        register.timestamp.FromDatetime(datetime.datetime.now())
        await self.context.write(register)
        async for message in stream:
            if self.state == shim_handler.STATES.READY and message.type in _ANSWERS:
                # The answer to a state request: hand it to the transaction waiting for it at once
                # (the shim makes a task of every message; there is one answer per key read or written).
                await self.msg_queue_handler.handle_msg_response(message)
            else:  # a new transaction (or registration): concurrently, as the shim does
                self._track_task(self.handle_message(message))
        if self._pending_tasks:
            await asyncio.gather(*self._pending_tasks, return_exceptions=True)


    async def handle_stub_interaction(self, msg: shim_pb.ChaincodeMessage, action: str = "Invoke") -> None:
        """The shim's, plus the transaction's chaincode event in its COMPLETED message: the shim's stub
        collects events but its handler never sends them, so no client would ever see one."""
        stub = ChaincodeStub(self, msg.channel_id, msg.txid, chaincode_pb2.ChaincodeInput.FromString(msg.payload),
                             msg.proposal)
        call = self.chaincode.init if action.lower() == "init" else self.chaincode.invoke
        response = await call(stub)
        if not response or not response.status:
            response = proposal_response_pb2.Response(status=500, message="the chaincode gave no response")
        completed = shim_pb.ChaincodeMessage(type=shim_pb.ChaincodeMessage.COMPLETED,
                                             payload=response.SerializeToString(), txid=msg.txid,
                                             channel_id=msg.channel_id)
        if response.status < 400 and (events := stub.get_events()):
            completed.chaincode_event.CopyFrom(events[-1])  # Fabric keeps one event per transaction
        await self.context.write(completed)


class ChaincodeService(shim_grpc.ChaincodeServicer):
    def __init__(self, chaincode_id: str, chaincode: Chaincode) -> None:
        self.chaincode_id = chaincode_id
        self.chaincode = chaincode

    async def Connect(self, request_iterator: AsyncIterable[shim_pb.ChaincodeMessage], context: Any) -> None:  # noqa: N802
        await Handler(self.chaincode_id, self.chaincode).chat_with_peer(request_iterator, context)


async def serve(chaincode: Chaincode, chaincode_id: str, address: str, key: bytes | None = None,
                cert: bytes | None = None, client_ca: bytes | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop with a few seconds' grace for transactions in flight."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    shim_grpc.add_ChaincodeServicer_to_server(ChaincodeService(chaincode_id, chaincode), server)
    if key and cert:
        server.add_secure_port(address, load_tls_config(key, cert, client_ca))
    else:
        server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(3)
