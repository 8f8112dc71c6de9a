"""Fabric's transaction messages, built and read by hand with the official protobufs (fabric_protos).

A client transaction, as Fabric 2.4+ Gateway clients make it:

    nonce (24 random bytes), creator = SerializedIdentity{mspid, id_bytes: certificate PEM}
    tx_id = hex SHA-256(nonce || creator)
    Proposal{header: Header{ChannelHeader{ENDORSER_TRANSACTION, timestamp, channel, tx_id,
                                          extension: ChaincodeHeaderExtension{chaincode name}},
                            SignatureHeader{creator, nonce}},
             payload: ChaincodeProposalPayload{ChaincodeInvocationSpec{chaincode name, args}}}
    SignedProposal{proposal bytes, ECDSA signature of the creator}

The Gateway's Endorse answers with the prepared transaction (an Envelope holding the endorsements),
which the client signs and hands to Submit. Signatures are ECDSA P-256 over SHA-256, DER, with S in
the lower half of the curve order: Fabric refuses the other (equally valid) half, so there is one
signature per message.

An endorsement is the peer's signature over proposal_response_payload || endorser (its serialized
identity); the payload holds the chaincode's response. For a checkpoint that response is the
checkpoint statement (ledger.signing.checkpoint_statement), so an endorsement, stored with the two
byte strings it covers, is a signature over the statement that anyone can check with the peer
organisation's CA (ledger.verify).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID
from fabric_protos.common import common_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, proposal_response_pb2, transaction_pb2
from google.protobuf.message import DecodeError

# The order of P-256: a signature's S above half of it is refused by Fabric (canonical "low S").
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
NONCE_BYTES = 24
OK = 200


@dataclass(frozen=True)
class ClientIdentity:
    """A Fabric client: its MSP id, certificate (PEM, as the MSP issued it) and private key."""

    msp_id: str
    cert_pem: bytes
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def from_files(cls, msp_id: str, cert: Path, key: Path) -> ClientIdentity:
        private_key = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key}: a Fabric client key is ECDSA")
        return cls(msp_id, Path(cert).read_bytes(), private_key)

    @property
    def serialized(self) -> bytes:
        return identities_pb2.SerializedIdentity(mspid=self.msp_id, id_bytes=self.cert_pem).SerializeToString()

    def sign(self, data: bytes) -> bytes:
        return low_s(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))


def low_s(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    if s > _P256_ORDER // 2:
        s = _P256_ORDER - s
    return encode_dss_signature(r, s)


def new_proposal(client: ClientIdentity, channel: str, chaincode: str, args: Sequence[bytes],
                 now: datetime | None = None) -> tuple[str, proposal_pb2.SignedProposal]:
    """(tx_id, signed proposal) invoking `chaincode` with args (the function name first)."""
    nonce = os.urandom(NONCE_BYTES)
    creator = client.serialized
    tx_id = hashlib.sha256(nonce + creator).hexdigest()
    channel_header = common_pb2.ChannelHeader(
        type=common_pb2.HeaderType.ENDORSER_TRANSACTION, channel_id=channel, tx_id=tx_id,
        extension=proposal_pb2.ChaincodeHeaderExtension(
            chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)).SerializeToString())
    channel_header.timestamp.FromDatetime((now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None))
    header = common_pb2.Header(
        channel_header=channel_header.SerializeToString(),
        signature_header=common_pb2.SignatureHeader(creator=creator, nonce=nonce).SerializeToString())
    spec = chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=chaincode_pb2.ChaincodeSpec(
        chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode), input=chaincode_pb2.ChaincodeInput(args=list(args))))
    payload = proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString())
    proposal = proposal_pb2.Proposal(header=header.SerializeToString(), payload=payload.SerializeToString())
    proposal_bytes = proposal.SerializeToString()
    return tx_id, proposal_pb2.SignedProposal(proposal_bytes=proposal_bytes, signature=client.sign(proposal_bytes))


def sign_envelope(client: ClientIdentity, envelope: common_pb2.Envelope) -> common_pb2.Envelope:
    """The prepared transaction, signed by its creator for Submit."""
    return common_pb2.Envelope(payload=envelope.payload, signature=client.sign(envelope.payload))


@dataclass(frozen=True)
class EndorsedAction:
    proposal_response_payload: bytes
    endorsements: tuple[proposal_response_pb2.Endorsement, ...]
    response: proposal_response_pb2.Response


def endorsed_action(envelope: common_pb2.Envelope) -> EndorsedAction:
    """The chaincode's response and the endorsements over it, from a prepared or committed transaction."""
    payload = common_pb2.Payload.FromString(envelope.payload)
    transaction = transaction_pb2.Transaction.FromString(payload.data)
    if len(transaction.actions) != 1:
        raise ValueError(f"a ledger transaction has one action, this one {len(transaction.actions)}")
    action = transaction_pb2.ChaincodeActionPayload.FromString(transaction.actions[0].payload).action
    return EndorsedAction(action.proposal_response_payload, tuple(action.endorsements),
                          chaincode_response(action.proposal_response_payload))


def chaincode_response(proposal_response_payload: bytes) -> proposal_response_pb2.Response:
    prp = proposal_response_pb2.ProposalResponsePayload.FromString(proposal_response_payload)
    return proposal_pb2.ChaincodeAction.FromString(prp.extension).response


def committed_envelope(processed_transaction: bytes) -> tuple[common_pb2.Envelope, int]:
    """(envelope, validation code) of qscc GetTransactionByID's answer."""
    processed = transaction_pb2.ProcessedTransaction.FromString(processed_transaction)
    return processed.transactionEnvelope, processed.validationCode


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def signature_records(action: EndorsedAction) -> list[dict[str, Any]]:
    """The endorsements as checkpoint signatures {org, cert_pem, signature, endorsement} (ledger.verify):
    `org` is the O= of the CA that issued the endorsing peer's certificate (Fabric node certificates
    carry no O= of their own); the verifier checks that CA is the org's, trusted."""
    records = []
    for endorsement in action.endorsements:
        endorser = identities_pb2.SerializedIdentity.FromString(endorsement.endorser)
        cert_pem = endorser.id_bytes.decode("ascii")
        records.append({
            "org": issuer_org(x509.load_pem_x509_certificate(endorser.id_bytes)),
            "cert_pem": cert_pem,
            "signature": b64(endorsement.signature),
            "endorsement": {"endorser": b64(endorsement.endorser),
                            "proposal_response_payload": b64(action.proposal_response_payload)},
        })
    return sorted(records, key=lambda record: record["org"])


def issuer_org(cert: x509.Certificate) -> str:
    values = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise ValueError("the endorser's certificate issuer names no single organisation (O=)")
    return values[0].value


def endorsed_bytes(endorsement: dict[str, Any], cert_pem: str, statement: bytes) -> bytes:
    """What an endorsement's signature covers, after checking it is an endorsement of `statement` by the
    holder of `cert_pem`; ValueError (the reason) if not."""
    try:
        endorser = base64.b64decode(endorsement["endorser"], validate=True)
        payload = base64.b64decode(endorsement["proposal_response_payload"], validate=True)
        identity = identities_pb2.SerializedIdentity.FromString(endorser)
        response = chaincode_response(payload)
    except (ValueError, TypeError, DecodeError) as exc:
        raise ValueError(f"the endorsement does not decode: {exc}") from None
    if identity.id_bytes != cert_pem.encode("ascii"):
        raise ValueError("the endorser's serialized identity is not the certificate given")
    if response.status != OK:
        raise ValueError(f"the endorsed chaincode response has status {response.status}")
    if response.payload != statement:
        raise ValueError("the endorsed chaincode response is not this checkpoint's statement")
    return payload + endorser
