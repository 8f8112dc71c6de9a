"""The offline verifier on bundles whose checkpoints are signed by Fabric endorsements.

The peers here are two organisations' CAs and peer certificates made with ledger.identity, signing a
ProposalResponsePayload exactly as a Fabric peer's endorser does (ECDSA over payload || endorser);
the bundles' entries, batches and proofs are the real ones. With OMNISTOCK_FABRIC_BIN set, the contract
tests verify bundles endorsed by a real network's peers too.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, proposal_response_pb2

from ledger import identity, merkle, policy, signing
from ledger.bundle import batch_record, dump_bundle, entry_record, make_bundle
from ledger.encoding import canonical_bytes, format_timestamp
from ledger.fabric import protocol
from ledger.verify import verify_bundle, verify_bundle_bytes
from tests.ledger.conftest import sale

RETAILER, AUDIT = policy.DEFAULT_CHECKPOINT_ENDORSERS
START = datetime.now(UTC) - timedelta(hours=1)


class Peer:
    """A peer's certificate as cryptogen issues it: no O= of its own (its CA names the org), OU=peer."""

    def __init__(self, org: str, msp_id: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
                 unit: str = "peer") -> None:
        self.key = identity.new_private_key()
        self.cert = (x509.CertificateBuilder()
                     .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                                              x509.NameAttribute(NameOID.COMMON_NAME, f"peer0.{org}")]))
                     .issuer_name(ca[0].subject).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(START).not_valid_after(START + timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                     .sign(ca[1], hashes.SHA256()))
        self.msp_id = msp_id

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def endorse(self, payload: bytes) -> proposal_response_pb2.Endorsement:
        endorser = identities_pb2.SerializedIdentity(mspid=self.msp_id, id_bytes=self.pem).SerializeToString()
        der = protocol.low_s(self.key.sign(payload + endorser, ec.ECDSA(hashes.SHA256())))
        return proposal_response_pb2.Endorsement(endorser=endorser, signature=der)


def make_ca(org: str, folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = identity.new_private_key()
    cert = identity.make_ca_cert(org, key, START)
    (folder / f"{org}-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Our organisations (finance signs batches) and two Fabric peer organisations, all in one trust dir."""
    data = tmp_path_factory.mktemp("fabric-verify")
    identity.init_identities(data, now=START)
    trust_dir = identity.msp_dir(data)
    cas = {org: make_ca(org, trust_dir) for org in (RETAILER, AUDIT)}
    peers = {RETAILER: Peer(RETAILER, "RetailerMSP", cas[RETAILER]), AUDIT: Peer(AUDIT, "AuditMSP", cas[AUDIT])}
    return {"finance": identity.load_identity(data, "finance"), "peers": peers, "cas": cas, "data": data,
            "trust": identity.TrustStore.from_dir(trust_dir)}


def response_payload(statement: bytes, status: int = 200) -> bytes:
    action = proposal_pb2.ChaincodeAction(
        results=b"rwset", response=proposal_response_pb2.Response(status=status, payload=statement),
        chaincode_id=chaincode_pb2.ChaincodeID(name="omnistock-ledger"))
    return proposal_response_pb2.ProposalResponsePayload(proposal_hash=b"h" * 32,
                                                         extension=action.SerializeToString()).SerializeToString()


def endorsed(size: int, root: bytes, timestamp: str, peers: list[Peer], payload: bytes | None = None) -> dict[str, Any]:
    statement = signing.checkpoint_statement(size, root, timestamp)
    payload = payload if payload is not None else response_payload(statement)
    action = protocol.EndorsedAction(payload, tuple(p.endorse(payload) for p in peers),
                                     protocol.chaincode_response(payload))
    return {"tree_size": size, "root_hash": root.hex(), "timestamp": timestamp,
            "signatures": protocol.signature_records(action)}


def bundle_of(world: dict[str, Any], checkpoint_of: Any = None) -> dict[str, Any]:
    entries = [sale(i) for i in range(5)]
    submission = signing.sign_submission(world["finance"], entries)
    leaves = [merkle.leaf_hash(canonical_bytes(e)) for e in entries]
    store = merkle.MemoryNodeStore()
    for leaf in leaves:
        store.append(leaf)
    batch = {"org": "finance", "first_seq": 0, "last_seq": 4, "timestamp": submission.timestamp,
             "batch_root": merkle.root(leaves).hex(), "cert_pem": submission.cert_pem,
             "signature": submission.signature, "statement": signing.SUBMISSION}
    stamp = format_timestamp(datetime.now(UTC))
    make = checkpoint_of or (lambda size, root, ts: endorsed(size, root, ts, list(world["peers"].values())))
    checkpoint = make(5, store.root(), stamp)
    records = [entry_record(i, e, merkle.inclusion_proof(i, 5, store.get_node)) for i, e in enumerate(entries)]
    return make_bundle(checkpoint, records, [batch_record(batch)])


def test_a_bundle_endorsed_by_both_peers_verifies(world: dict[str, Any]) -> None:
    report = verify_bundle(bundle_of(world), world["trust"])
    assert report.ok, report.summary()
    assert report.checkpoint_signers == sorted([RETAILER, AUDIT])
    assert report.required_signers == [RETAILER, AUDIT] and report.entries_checked == 5


def test_a_flipped_entry_byte_fails(world: dict[str, Any]) -> None:
    raw = dump_bundle(bundle_of(world))
    position = raw.index(b'"o-3"') + 3
    bad = verify_bundle_bytes(raw[:position] + bytes([raw[position] ^ 1]) + raw[position + 1:], world["trust"])
    assert not bad.ok and bad.first_bad_seq == 3


def test_one_organisations_endorsement_is_not_enough(world: dict[str, Any]) -> None:
    retailer_only = bundle_of(world, lambda s, r, t: endorsed(s, r, t, [world["peers"][RETAILER]]))
    report = verify_bundle(retailer_only, world["trust"])
    assert not report.ok and f"no valid signature by {AUDIT!r}" in report.summary()
    # ...unless the auditor's own policy says so.
    assert verify_bundle(retailer_only, world["trust"], endorsers=[RETAILER]).ok


def test_an_endorsement_of_another_statement_is_refused(world: dict[str, Any]) -> None:
    def other_root(size: int, root: bytes, ts: str) -> dict[str, Any]:
        payload = response_payload(signing.checkpoint_statement(size, bytes(32), ts))
        return endorsed(size, root, ts, list(world["peers"].values()), payload)

    report = verify_bundle(bundle_of(world, other_root), world["trust"])
    assert not report.ok and "not this checkpoint's statement" in report.summary()


def test_an_endorsed_error_response_is_refused(world: dict[str, Any]) -> None:
    def failed(size: int, root: bytes, ts: str) -> dict[str, Any]:
        payload = response_payload(signing.checkpoint_statement(size, root, ts), status=500)
        return endorsed(size, root, ts, list(world["peers"].values()), payload)

    assert "status 500" in verify_bundle(bundle_of(world, failed), world["trust"]).summary()


def test_a_peer_of_an_untrusted_ca_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    impostor = Peer(AUDIT, "AuditMSP", make_ca(AUDIT, tmp_path))  # names the audit firm, other CA
    report = verify_bundle(bundle_of(world, lambda s, r, t: endorsed(s, r, t, [world["peers"][RETAILER], impostor])),
                           world["trust"])
    assert not report.ok and "not issued by a trusted CA" in report.summary()


def test_a_client_of_the_org_cannot_endorse(world: dict[str, Any], tmp_path: Path) -> None:
    peers = world["peers"]
    ca = world["cas"][AUDIT]
    client = Peer(AUDIT, "AuditMSP", ca, unit="client")  # the audit firm's own CA, but a client's certificate
    report = verify_bundle(bundle_of(world, lambda s, r, t: endorsed(s, r, t, [peers[RETAILER], client])),
                           world["trust"])
    assert not report.ok and "not a peer's" in report.summary()


def test_a_swapped_certificate_or_signature_is_refused(world: dict[str, Any]) -> None:
    bundle = bundle_of(world)
    sigs = bundle["checkpoint"]["signatures"]
    sigs[0]["cert_pem"], sigs[1]["cert_pem"] = sigs[1]["cert_pem"], sigs[0]["cert_pem"]
    assert "serialized identity is not the certificate given" in verify_bundle(bundle, world["trust"]).summary()
    bundle = bundle_of(world)
    sigs = bundle["checkpoint"]["signatures"]
    sigs[0]["signature"] = sigs[1]["signature"]
    assert "signature does not verify" in verify_bundle(bundle, world["trust"]).summary()
    bundle = bundle_of(world)
    bundle["checkpoint"]["signatures"][0]["endorsement"]["endorser"] = base64.b64encode(b"\xff\x00").decode()
    assert not verify_bundle(bundle, world["trust"]).ok


def test_endorsements_beside_ledger_signatures_are_malformed(world: dict[str, Any]) -> None:
    bundle = bundle_of(world)
    cp = bundle["checkpoint"]
    finance_sig = signing.checkpoint_signature(cp, world["finance"])
    cp["signatures"].append(finance_sig)
    report = verify_bundle(bundle, world["trust"])
    assert not report.ok and "mix Fabric endorsements" in report.summary()


def test_a_bundle_of_the_embedded_backend_still_needs_ledger_and_finance(world: dict[str, Any]) -> None:
    unsigned = bundle_of(world, lambda s, r, t: {"tree_size": s, "root_hash": r.hex(), "timestamp": t,
                                                 "signatures": []})
    report = verify_bundle(unsigned, world["trust"])
    assert "no valid signature by 'ledger'" in report.summary() and report.required_signers == ["ledger", "finance"]


def test_an_auditor_trusting_only_its_own_ca_checks_only_its_own_peers_endorsement(
        world: dict[str, Any], tmp_path: Path) -> None:
    bundle = bundle_of(world)
    own = tmp_path / "own"
    own.mkdir()
    for org in ("finance",):
        for pem in (identity.msp_dir(Path(world["data"])) / org).glob("*.pem"):
            (own / f"{org}-{pem.name}").write_bytes(pem.read_bytes())
    (own / "audit-ca.pem").write_bytes(world["cas"][AUDIT][0].public_bytes(serialization.Encoding.PEM))
    trust = identity.TrustStore.from_dir(own)
    assert "no valid signature by 'retailer.omnistock.local'" in verify_bundle(bundle, trust).summary()
    report = verify_bundle(bundle, trust, endorsers=[AUDIT])
    assert report.ok, report.summary()
    assert report.checkpoint_signers == [AUDIT]
    # ...but an endorsement it does trust must hold: the audit firm's, tampered, fails.
    bundle["checkpoint"]["signatures"] = [{**s, "signature": s["signature"][:-8] + "AAAAAAA="}
                                          if s["org"] == AUDIT else s for s in bundle["checkpoint"]["signatures"]]
    assert not verify_bundle(bundle, trust, endorsers=[AUDIT]).ok
