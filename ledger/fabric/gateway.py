"""A client of a peer's Gateway service (Fabric 2.4+): Evaluate, Endorse, Submit, CommitStatus,
ChaincodeEvents.

One TLS channel to one organisation's peer; that peer's gateway collects the other organisations'
endorsements as the chaincode's endorsement policy asks (or from `endorsing_msps`, if given) and
forwards the transaction to the orderer. Every message is built and signed here (ledger.fabric.protocol)
with the client identity of the organisation's MSP material.

Errors: a chaincode refusal (an error response, status 500) comes back as ChaincodeRefused with the
chaincode's own message ("PermissionDenied: ...", "Refused: ..."); anything that says the network could
not do it now (a peer or the orderer down, a timeout) is FabricUnavailable, which the backend retries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import transaction_pb2

from ledger.fabric import protocol

_MAX_MESSAGE = 100 * 2**20  # the peer's own default limit; an export's nodes can be many
VALID = transaction_pb2.TxValidationCode.VALID
# The transaction read a key another one changed first (the log's head): endorse it again.
RETRY_CODES = frozenset({transaction_pb2.TxValidationCode.MVCC_READ_CONFLICT,
                         transaction_pb2.TxValidationCode.PHANTOM_READ_CONFLICT})


class FabricError(Exception):
    """Something the network answered that the ledger cannot use."""


class FabricUnavailable(FabricError, ConnectionError):
    """The network could not do it now (a peer or the orderer unreachable, a deadline passed); a
    ConnectionError, so the HTTP layer answers 503 (retry) as for a database that is down."""


class ChaincodeRefused(FabricError):
    """The chaincode answered with an error: `message` is its own reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotCommitted(FabricError):
    """The transaction was ordered but marked invalid (`code`: a peer.TxValidationCode)."""

    def __init__(self, tx_id: str, code: int) -> None:
        super().__init__(f"transaction {tx_id} was not committed: {transaction_pb2.TxValidationCode.Name(code)}")
        self.code = code


@dataclass(frozen=True)
class Prepared:
    tx_id: str
    envelope: common_pb2.Envelope
    action: protocol.EndorsedAction

    @property
    def result(self) -> bytes:
        return self.action.response.payload


@dataclass(frozen=True)
class GatewayConfig:
    endpoint: str  # host:port of the organisation's peer
    tls_ca: bytes  # PEM of the peer's TLS CA
    server_name: str | None  # the peer's TLS host name when `endpoint` is another address
    client: protocol.ClientIdentity
    channel: str
    chaincode: str
    endorsing_msps: tuple[str, ...] = ()  # empty: the gateway plans from the endorsement policy
    timeout_s: float = 30.0

    @classmethod
    def from_network(cls, description: dict[str, Any], org: str, user: str = "User1", *,
                     endorsing_msps: Sequence[str] = (), timeout_s: float = 30.0) -> GatewayConfig:
        """From the network.json that `omnistock ledger fabric up` writes (ledger.fabric.network)."""
        peer = description["orgs"][org]
        member = peer["users"][user]
        return cls(endpoint=peer["peer_endpoint"], tls_ca=Path(peer["tls_ca"]).read_bytes(),
                   server_name=peer.get("peer_host"),
                   client=protocol.ClientIdentity.from_files(peer["msp_id"], Path(member["cert"]), Path(member["key"])),
                   channel=description["channel"], chaincode=description["chaincode"],
                   endorsing_msps=tuple(endorsing_msps), timeout_s=timeout_s)


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE), ("grpc.max_send_message_length", _MAX_MESSAGE)]
        if config.server_name:
            options.append(("grpc.ssl_target_name_override", config.server_name))
        self._channel = grpc.aio.secure_channel(config.endpoint, grpc.ssl_channel_credentials(config.tls_ca),
                                                options=options)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    def _proposal(self, function: str, args: Sequence[str | bytes], chaincode: str | None = None) -> tuple[str, Any]:
        encoded = [function.encode()] + [a.encode() if isinstance(a, str) else a for a in args]
        return protocol.new_proposal(self.config.client, self.config.channel, chaincode or self.config.chaincode,
                                     encoded)

    async def evaluate(self, function: str, *args: str | bytes, chaincode: str | None = None) -> bytes:
        """Run a read on one peer (the gateway's choice) and return the chaincode's payload."""
        tx_id, proposal = self._proposal(function, args, chaincode)
        request = gateway_pb2.EvaluateRequest(transaction_id=tx_id, channel_id=self.config.channel,
                                              proposed_transaction=proposal)
        response = await self._call(self._stub.Evaluate, request)
        return bytes(response.result.payload)

    async def endorse(self, function: str, *args: str | bytes) -> Prepared:
        """Collect the endorsements the policy needs; the prepared transaction is not sent yet."""
        tx_id, proposal = self._proposal(function, args)
        request = gateway_pb2.EndorseRequest(transaction_id=tx_id, channel_id=self.config.channel,
                                             proposed_transaction=proposal,
                                             endorsing_organizations=list(self.config.endorsing_msps))
        response = await self._call(self._stub.Endorse, request)
        envelope = response.prepared_transaction
        action = protocol.endorsed_action(envelope)
        if action.response.status != protocol.OK:
            raise ChaincodeRefused(action.response.message)
        return Prepared(tx_id, envelope, action)

    async def submit(self, prepared: Prepared) -> None:
        """Sign the prepared transaction and hand it to the orderer (through the gateway)."""
        request = gateway_pb2.SubmitRequest(transaction_id=prepared.tx_id, channel_id=self.config.channel,
                                            prepared_transaction=protocol.sign_envelope(self.config.client,
                                                                                        prepared.envelope))
        await self._call(self._stub.Submit, request)

    async def commit_status(self, tx_id: str, timeout_s: float | None = None) -> tuple[int, int]:
        """(validation code, block number) once the gateway's peer has committed the block holding it."""
        request = gateway_pb2.CommitStatusRequest(transaction_id=tx_id, channel_id=self.config.channel,
                                                  identity=self.config.client.serialized).SerializeToString()
        signed = gateway_pb2.SignedCommitStatusRequest(request=request, signature=self.config.client.sign(request))
        response = await self._call(self._stub.CommitStatus, signed, timeout_s)
        return response.result, response.block_number

    async def submit_and_commit(self, prepared: Prepared, timeout_s: float | None = None) -> int:
        """Submit and wait for the commit; NotCommitted if the block marked it invalid."""
        await self.submit(prepared)
        code, _ = await self.commit_status(prepared.tx_id, timeout_s)
        if code != VALID:
            raise NotCommitted(prepared.tx_id, code)
        return code

    async def chaincode_events(self, start_block: int | None = None) -> AsyncIterator[tuple[int, Any]]:
        """(block number, ChaincodeEvent) of the chaincode's committed transactions, from `start_block`
        (None: from the next commit on), as the gateway's peer commits them; runs until cancelled."""
        start = (ab_pb2.SeekPosition(next_commit=ab_pb2.SeekNextCommit()) if start_block is None
                 else ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block)))
        request = gateway_pb2.ChaincodeEventsRequest(channel_id=self.config.channel, chaincode_id=self.config.chaincode,
                                                     identity=self.config.client.serialized,
                                                     start_position=start).SerializeToString()
        signed = gateway_pb2.SignedChaincodeEventsRequest(request=request, signature=self.config.client.sign(request))
        try:
            async for response in self._stub.ChaincodeEvents(signed):
                for event in response.events:
                    yield response.block_number, event
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def committed_transaction(self, tx_id: str) -> protocol.EndorsedAction:
        """A committed transaction's response and endorsements, from the peer's ledger (qscc)."""
        raw = await self.evaluate("GetTransactionByID", self.config.channel, tx_id, chaincode="qscc")
        envelope, code = protocol.committed_envelope(raw)
        if code != VALID:
            raise NotCommitted(tx_id, code)
        return protocol.endorsed_action(envelope)

    async def _call(self, method: Any, request: Any, timeout_s: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout_s or self.config.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None
        except TimeoutError:
            raise FabricUnavailable("no answer from the gateway in time") from None


def _error(exc: grpc.aio.AioRpcError) -> FabricError:
    details = _error_details(exc)
    text = "; ".join(f"{d.msp_id or d.address}: {d.message}" for d in details) or (exc.details() or "")
    for detail in details:  # a chaincode's own error response: "chaincode response 500, <its message>"
        marker = "chaincode response 500, "
        if marker in detail.message:
            return ChaincodeRefused(detail.message.split(marker, 1)[1])
    marker = "chaincode response 500, "
    if marker in (exc.details() or ""):
        return ChaincodeRefused((exc.details() or "").split(marker, 1)[1])
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                      grpc.StatusCode.CANCELLED):
        return FabricUnavailable(f"{exc.code().name}: {text}")
    # The gateway knows no live set of peers that satisfies the endorsement policy: a required peer is
    # down, or (just after start) not yet found through discovery. It passes when the peer is back.
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "no combination of peers" in text:
        return FabricUnavailable(f"{exc.code().name}: {text}")
    return FabricError(f"{exc.code().name}: {text}")


def _error_details(exc: grpc.aio.AioRpcError) -> list[gateway_pb2.ErrorDetail]:
    """The gateway's per-peer ErrorDetails, from the google.rpc.Status in the trailing metadata (read
    with the protobuf wire format: the Status message itself is not among Fabric's protos)."""
    raw = next((value for key, value in (exc.trailing_metadata() or ()) if key == "grpc-status-details-bin"), None)
    if not isinstance(raw, bytes):
        return []
    details = []
    try:
        for field, value in _length_delimited(raw):
            if field == 3:  # Status.details: repeated google.protobuf.Any
                any_fields = dict(_length_delimited(value))
                if any_fields.get(1, b"").endswith(b"gateway.ErrorDetail"):
                    details.append(gateway_pb2.ErrorDetail.FromString(any_fields.get(2, b"")))
    except (ValueError, IndexError):
        return details
    return details


def _length_delimited(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, bytes) of the length-delimited fields of a protobuf message; others skipped."""
    fields, position = [], 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            fields.append((field, data[position:position + length]))
            position += length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
