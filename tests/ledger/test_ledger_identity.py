import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ledger import identity
from ledger.identity import TrustStore, UntrustedCertificate

T0 = datetime(2024, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=30)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_init_keeps_certificates_member_keys_and_ca_keys_in_three_places(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, now=T0)
    for org in identity.ORGS:
        folder = identity.msp_dir(tmp_path) / org
        assert {p.name for p in folder.iterdir()} == {"ca.pem", "member.pem"}  # public only: the trust dir
        assert {p.name for p in identity.key_dir(tmp_path, org).iterdir()} == {"member.key"}
        assert {p.name for p in (identity.offline_ca_dir(tmp_path) / org).iterdir()} == {"ca.key"}
        for key in (identity.key_dir(tmp_path, org) / "member.key", identity.offline_ca_dir(tmp_path) / org / "ca.key"):
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
            assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
        member = identity.load_identity(tmp_path, org)
        subject = member.cert.subject
        assert subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value == org
        assert subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == member.role


def test_init_is_idempotent_and_never_overwrites_keys(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, now=T0)
    before = snapshot(tmp_path)
    identity.init_identities(tmp_path, now=LATER)
    assert snapshot(tmp_path) == before


def test_init_completes_a_half_initialised_org_with_its_existing_key(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, orgs=["finance"], now=T0)
    folder = identity.msp_dir(tmp_path) / "finance"
    key_path = identity.key_dir(tmp_path, "finance") / "member.key"
    key_before = key_path.read_bytes()
    (folder / "member.pem").unlink()
    identity.init_identities(tmp_path, orgs=["finance"], now=T0)
    assert key_path.read_bytes() == key_before
    identity.load_identity(tmp_path, "finance")  # the new certificate matches the kept key


def test_init_needs_no_ca_key_when_nothing_is_to_be_issued(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, now=T0)
    offline = tmp_path / "vault"
    identity.offline_ca_dir(tmp_path).rename(offline)  # the CA keys went offline
    identity.init_identities(tmp_path, now=LATER)  # every service start after that
    (identity.msp_dir(tmp_path) / "ops" / "member.pem").unlink()
    with pytest.raises(identity.IdentityMissing, match="--ca-dir"):
        identity.init_identities(tmp_path, now=LATER)
    identity.init_identities(tmp_path, now=LATER, ca_dir=offline)
    assert not identity.offline_ca_dir(tmp_path).exists()
    identity.load_identity(tmp_path, "ops")


def test_init_moves_keys_of_the_old_layout_out_of_the_trust_directory(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, orgs=["finance"], now=T0)
    folder = identity.msp_dir(tmp_path) / "finance"
    keys = {"ca.key": identity.offline_ca_dir(tmp_path) / "finance" / "ca.key",
            "member.key": identity.key_dir(tmp_path, "finance") / "member.key"}
    before = {name: path.read_bytes() for name, path in keys.items()}
    for name, path in keys.items():  # as data directories from before this layout hold them
        path.rename(folder / name)
    identity.init_identities(tmp_path, orgs=["finance"], now=LATER)
    assert not list(folder.glob("*.key"))
    assert {name: path.read_bytes() for name, path in keys.items()} == before


def test_every_org_chains_to_its_own_ca(data_dir: Path, trust: TrustStore) -> None:
    for org in identity.ORGS:
        trust.check_signer(identity.load_identity(data_dir, org).cert, org, LATER)


def test_a_member_cannot_sign_for_another_org(data_dir: Path, trust: TrustStore) -> None:
    with pytest.raises(UntrustedCertificate, match="belongs to 'ops'"):
        trust.check_signer(identity.load_identity(data_dir, "ops").cert, "finance", LATER)


def test_another_orgs_ca_cannot_vouch_for_a_member(data_dir: Path, trust: TrustStore) -> None:
    ops_ca = x509.load_pem_x509_certificate((identity.msp_dir(data_dir) / "ops" / "ca.pem").read_bytes())
    ops_ca_key = serialization.load_pem_private_key(
        (identity.offline_ca_dir(data_dir) / "ops" / "ca.key").read_bytes(), password=None
    )
    forged = identity.issue_member_cert(
        ops_ca,
        ops_ca_key,
        identity.new_private_key().public_key(),
        "finance",
        "client",
        T0,
        LATER,  # type: ignore[arg-type]
    )
    with pytest.raises(UntrustedCertificate, match="not issued by a trusted CA"):
        trust.check_signer(forged, "finance", LATER)


def test_an_unknown_ca_is_refused(tmp_path: Path, trust: TrustStore) -> None:
    identity.init_identities(tmp_path, orgs=["finance"], now=T0)
    stranger = identity.load_identity(tmp_path, "finance")
    with pytest.raises(UntrustedCertificate, match="not issued by a trusted CA"):
        trust.check_signer(stranger.cert, "finance", LATER)


def test_a_ca_certificate_cannot_sign_statements(data_dir: Path, trust: TrustStore) -> None:
    ca = x509.load_pem_x509_certificate((identity.msp_dir(data_dir) / "finance" / "ca.pem").read_bytes())
    with pytest.raises(UntrustedCertificate, match="CA certificate cannot sign"):
        trust.check_signer(ca, "finance", LATER)


def test_expired_and_not_yet_valid_members_are_refused(data_dir: Path, trust: TrustStore) -> None:
    cert = identity.load_identity(data_dir, "finance").cert
    for moment in (T0 - timedelta(days=1), T0 + identity.MEMBER_VALIDITY + timedelta(seconds=1)):
        with pytest.raises(UntrustedCertificate, match="not valid at"):
            trust.check_signer(cert, "finance", moment)


def test_rotation_issues_a_new_member_and_keeps_the_old_certificate(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, now=T0)
    old = identity.load_identity(tmp_path, "finance")
    with pytest.raises(identity.IdentityMissing):  # the CA key is read from the offline folder named
        identity.rotate_member(tmp_path, "finance", tmp_path / "nowhere", now=LATER)
    new = identity.rotate_member(tmp_path, "finance", identity.offline_ca_dir(tmp_path), now=LATER)
    folder = identity.msp_dir(tmp_path) / "finance"
    assert new.cert.serial_number != old.cert.serial_number
    assert new.cert.public_key() != old.cert.public_key()
    assert identity.load_identity(tmp_path, "finance").cert == new.cert
    assert (folder / f"member-{old.cert.serial_number:x}.pem").read_bytes() == old.cert_pem.encode()
    assert stat.S_IMODE((identity.key_dir(tmp_path, "finance") / "member.key").stat().st_mode) == 0o600
    trust = TrustStore.from_dir(identity.msp_dir(tmp_path))
    assert {identity.fingerprint(old.cert), identity.fingerprint(new.cert)} <= set(trust.members)
    trust.check_signer(old.cert, "finance", LATER)  # old entries still verify
    trust.check_signer(new.cert, "finance", LATER)
    described = next(d for d in identity.describe_identities(tmp_path) if d["org"] == "finance")
    assert [m["current"] for m in described["members"]] == [False, True]


def test_revoked_members_are_refused_and_others_are_not(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, now=T0)
    old = identity.load_identity(tmp_path, "finance")
    new = identity.rotate_member(tmp_path, "finance", identity.offline_ca_dir(tmp_path), now=LATER)
    identity.revoke(tmp_path, "finance", old.cert.serial_number)
    revoked = json.loads((identity.msp_dir(tmp_path) / "finance" / "revoked.json").read_text())
    assert revoked == {"org": "finance", "serials": [f"{old.cert.serial_number:x}"]}
    trust = TrustStore.from_dir(identity.msp_dir(tmp_path))
    with pytest.raises(UntrustedCertificate, match="revoked"):
        trust.check_signer(old.cert, "finance", LATER)
    trust.check_signer(new.cert, "finance", LATER)


def test_a_key_that_does_not_match_its_certificate_is_refused(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, orgs=["ops"], now=T0)
    (identity.key_dir(tmp_path, "ops") / "member.key").write_bytes(
        (identity.offline_ca_dir(tmp_path) / "ops" / "ca.key").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        identity.load_identity(tmp_path, "ops")


def test_a_trust_dir_with_a_broken_ca_is_refused(tmp_path: Path, data_dir: Path) -> None:
    pem = (identity.msp_dir(data_dir) / "audit" / "ca.pem").read_bytes()
    (tmp_path / "ca.pem").write_bytes(pem.replace(pem[100:101], b"A" if pem[100:101] != b"A" else b"B"))
    with pytest.raises(ValueError):
        TrustStore.from_dir(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        TrustStore.from_dir(tmp_path / "missing")


def test_init_refuses_a_ca_key_that_does_not_match_its_certificate(tmp_path: Path) -> None:
    identity.init_identities(tmp_path, orgs=["audit"], now=T0)
    ca_key = identity.offline_ca_dir(tmp_path) / "audit" / "ca.key"
    ca_key.unlink()
    (identity.msp_dir(tmp_path) / "audit" / "member.pem").unlink()  # so that init must issue one
    with pytest.raises(identity.IdentityMissing, match="--ca-dir"):  # never a fresh CA key for an old CA
        identity.init_identities(tmp_path, orgs=["audit"], now=T0)
    ca_key.write_bytes(identity._key_bytes(identity.new_private_key()))  # the wrong key put back
    with pytest.raises(ValueError, match="does not match ca.pem"):
        identity.init_identities(tmp_path, orgs=["audit"], now=T0)
