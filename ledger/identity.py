"""Fabric-MSP-like identities: one CA per organisation, member certificates, rotation, revocation.

Each organisation signs where it runs: a process holds only its own organisation's member key, and
CA keys never sit where a service reads. Under OMNISTOCK_DATA_DIR:

    ledger/msp/<org>/ca.pem, member.pem      public: the org's CA and current member certificate
    ledger/msp/<org>/member-<serial>.pem     members retired by rotation, kept to verify old entries
    ledger/msp/<org>/revoked.json            {"org": "<org>", "serials": ["<hex serial>", ...]}
    ledger/keys/<org>/member.key             the org's member private key: only that org's process
                                             (settings: <org>_key_dir; docker-compose: a volume each)
    ledger/offline-ca/<org>/ca.key           CA private keys (OFFLINE_CA), or `--ca-dir DIR`: read
                                             only by `ledger init` and `ledger rotate`, never a service

The msp folder is the trust directory (public certificates and revocations only): every service and
every auditor may read all of it. Organisations: ops, finance and audit sign entries; `ledger` is the
log's own identity and signs checkpoints. Private keys are created with mode 0600 from the first byte
(os.open with O_EXCL), never chmod-ed afterwards, so no other user can read one even briefly; their
folders are 0700.

Data directories from before this layout kept ca.key and member.key beside the certificates in
msp/<org>/; `ledger init` moves them (CA keys to the offline folder, member keys to keys/<org>/).

A TrustStore is what a verifier trusts: CA certificates (self-signed, CA=true) found in a directory of
PEM files, plus any member certificates and revoked.json files there.
"""

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ORGS = ("ops", "finance", "audit", "ledger")
# Fabric calls entry submitters "client" and the ordering service "orderer"; the ledger identity
# plays the orderer's part (it orders entries and signs checkpoints).
MEMBER_ROLES: Mapping[str, str] = {"ops": "client", "finance": "client", "audit": "client", "ledger": "orderer"}
CA_VALIDITY = timedelta(days=3650)
MEMBER_VALIDITY = timedelta(days=365)
MEMBER = "member"


class UntrustedCertificate(ValueError):
    """A certificate that must not be accepted as a signer; the message says why."""


@dataclass(frozen=True)
class Identity:
    org: str
    role: str
    cert: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# Relative to OMNISTOCK_DATA_DIR. The backup copies <data_dir>/ledger except OFFLINE_CA.
MSP = Path("ledger") / "msp"
KEYS = Path("ledger") / "keys"
OFFLINE_CA = Path("ledger") / "offline-ca"
CA_KEY = "ca.key"
MEMBER_KEY = f"{MEMBER}.key"


def msp_dir(data_dir: Path) -> Path:
    """The trust directory: every org's public certificates and revocations."""
    return Path(data_dir) / MSP


def key_dir(data_dir: Path, org: str) -> Path:
    """The default folder of `org`'s member private key."""
    return Path(data_dir) / KEYS / org


def offline_ca_dir(data_dir: Path) -> Path:
    """The default folder of the CA private keys (<folder>/<org>/ca.key); no service reads it."""
    return Path(data_dir) / OFFLINE_CA


class IdentityMissing(FileNotFoundError):
    """An organisation's certificate or key is not where this process looks; the message says what to run."""


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_org(cert: x509.Certificate) -> str:
    values = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise UntrustedCertificate("certificate subject must name exactly one organisation (O=)")
    return values[0].value


# --- certificate issuance ---------------------------------------------------------------------


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca_cert(org: str, key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, f"ca.{org}")]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .sign(key, hashes.SHA256())
    )


def issue_member_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    org: str,
    role: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{MEMBER}@{org}"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


# --- files ------------------------------------------------------------------------------------


def _write_file(path: Path, data: bytes, mode: int, replace: bool) -> bool:
    """Write atomically: readers see the old file or the whole new one, never a part.

    With replace=False an existing file wins (returns False), which makes init idempotent and
    safe when two processes run it at once: os.link refuses to overwrite.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_bytes(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        _private_folder(path.parent)
        _write_file(path, _key_bytes(new_private_key()), 0o600, replace=False)
    return _load_key(path)  # read back: if another process won the race, its key is the one


def _private_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def _move_legacy_key(old: Path, new: Path) -> None:
    """A key from the old layout (beside the certificates) to where it belongs now; never overwrites."""
    if not old.exists():
        return
    _private_folder(new.parent)
    if new.exists():
        if new.read_bytes() != old.read_bytes():
            raise ValueError(f"{old} and {new} hold different keys; keep the right one and remove the other")
    elif not _write_file(new, old.read_bytes(), 0o600, replace=False):
        raise ValueError(f"{new} appeared while moving {old}; run init again")
    old.unlink()


def init_identities(data_dir: Path, orgs: Iterable[str] = ORGS, now: datetime | None = None,
                    ca_dir: Path | None = None) -> None:
    """Create every org's CA and current member; existing keys and certificates are kept as they are.

    CA private keys go to `ca_dir` (default: the offline folder, OFFLINE_CA), member keys to
    keys/<org>/, certificates to the msp folder. A CA key is read only when a certificate must be issued.
    """
    now = now or datetime.now(UTC)
    ca_dir = Path(ca_dir) if ca_dir is not None else offline_ca_dir(data_dir)
    for org in orgs:
        folder = msp_dir(data_dir) / org
        folder.mkdir(parents=True, exist_ok=True)
        ca_key_path, member_key_path = ca_dir / org / CA_KEY, key_dir(data_dir, org) / MEMBER_KEY
        _move_legacy_key(folder / CA_KEY, ca_key_path)
        _move_legacy_key(folder / MEMBER_KEY, member_key_path)
        has_ca, has_member = (folder / "ca.pem").exists(), (folder / f"{MEMBER}.pem").exists()
        if has_ca and has_member:
            if not member_key_path.exists():
                raise IdentityMissing(f"{member_key_path} is missing while {folder / 'member.pem'} exists: restore "
                                      "it, or issue a new member with "
                                      f"`omnistock ledger rotate --org {org} --ca-dir DIR`")
            continue  # nothing to issue: the CA key is not needed (it may well be offline)
        if has_ca and not ca_key_path.exists():
            raise IdentityMissing(f"{org}: a member certificate must be issued, but the CA key {ca_key_path} is "
                                  "not there; pass --ca-dir with the offline CA folder")
        ca_key = _ensure_key(ca_key_path)
        if not has_ca:
            _write_file(folder / "ca.pem", _cert_bytes(make_ca_cert(org, ca_key, now)), 0o644, replace=False)
        ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        if ca_cert.public_key() != ca_key.public_key():
            # ca.key lost and regenerated: issuing with it would mint members nobody can verify.
            raise ValueError(f"{folder}: {ca_key_path} does not match ca.pem; restore the key or remove both")
        member_key = _ensure_key(member_key_path)
        if not (folder / f"{MEMBER}.pem").exists():
            cert = issue_member_cert(
                ca_cert, ca_key, member_key.public_key(), org, MEMBER_ROLES[org], now, now + MEMBER_VALIDITY
            )
            _write_file(folder / f"{MEMBER}.pem", _cert_bytes(cert), 0o644, replace=False)


def load_identity(data_dir: Path, org: str, member_key_dir: Path | None = None) -> Identity:
    """The org's current signing member: its certificate from the msp folder, its key from
    `member_key_dir` (default keys/<org>/). The only function that opens a member key."""
    cert_path = msp_dir(data_dir) / org / f"{MEMBER}.pem"
    key_path = (Path(member_key_dir) if member_key_dir is not None else key_dir(data_dir, org)) / MEMBER_KEY
    for path in (cert_path, key_path):
        if not path.exists():
            raise IdentityMissing(f"{path} does not exist; run `omnistock ledger init`")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = _load_key(key_path)
    if cert.public_key() != key.public_key():
        raise ValueError(f"{key_path} does not match {cert_path} (interrupted rotation?)")
    return Identity(org, MEMBER_ROLES[org], cert, key)


def rotate_member(data_dir: Path, org: str, ca_dir: Path, now: datetime | None = None,
                  member_key_dir: Path | None = None) -> Identity:
    """Issue a new member key and certificate with the CA key from `ca_dir`/<org>/ca.key; the old
    certificate stays on disk, its key does not."""
    now = now or datetime.now(UTC)
    folder = msp_dir(data_dir) / org
    keys = Path(member_key_dir) if member_key_dir is not None else key_dir(data_dir, org)
    ca_key_path = Path(ca_dir) / org / CA_KEY
    if not ca_key_path.exists():
        raise IdentityMissing(f"{ca_key_path} does not exist: --ca-dir must name the offline CA folder")
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = _load_key(ca_key_path)
    if ca_cert.public_key() != ca_key.public_key():
        raise ValueError(f"{ca_key_path} is not the key of {folder / 'ca.pem'}")
    old_cert = x509.load_pem_x509_certificate((folder / f"{MEMBER}.pem").read_bytes())
    key = new_private_key()
    cert = issue_member_cert(ca_cert, ca_key, key.public_key(), org, MEMBER_ROLES[org], now, now + MEMBER_VALIDITY)
    # Archive first: whatever happens next, the old certificate is never lost.
    _write_file(folder / f"{MEMBER}-{old_cert.serial_number:x}.pem", _cert_bytes(old_cert), 0o644, replace=True)
    # Key before certificate: a crash in between leaves a key without its cert, which load_identity
    # refuses loudly (mismatch check) rather than silently signing with the retired key.
    _private_folder(keys)
    _write_file(keys / MEMBER_KEY, _key_bytes(key), 0o600, replace=True)
    _write_file(folder / f"{MEMBER}.pem", _cert_bytes(cert), 0o644, replace=True)
    return Identity(org, MEMBER_ROLES[org], cert, key)


def revoke(data_dir: Path, org: str, serial: int) -> None:
    """Add a member serial to the org's revoked list; entries it signed stop verifying."""
    path = msp_dir(data_dir) / org / "revoked.json"
    serials = set(_read_revoked(path)[1]) if path.exists() else set()
    serials.add(serial)
    document = {"org": org, "serials": [f"{s:x}" for s in sorted(serials)]}
    _write_file(path, json.dumps(document, indent=2).encode() + b"\n", 0o644, replace=True)


def _read_revoked(path: Path) -> tuple[str, frozenset[int]]:
    document = json.loads(path.read_text("utf-8"))
    if not isinstance(document.get("org"), str) or not isinstance(document.get("serials"), list):
        raise ValueError(f'{path}: expected {{"org": str, "serials": [hex, ...]}}')
    return document["org"], frozenset(int(s, 16) for s in document["serials"])


def describe_identities(data_dir: Path) -> list[dict[str, Any]]:
    """What GET /v1/ledger/identities shows: each org, its role, CA and member certificates (PEM)."""
    trust = TrustStore.from_dir(msp_dir(data_dir))
    result = []
    for org in ORGS:
        folder = msp_dir(data_dir) / org
        if not (folder / "ca.pem").exists():
            continue
        current = x509.load_pem_x509_certificate((folder / f"{MEMBER}.pem").read_bytes())
        members = [c for c in trust.members.values() if _safe_org(c) == org]
        result.append(
            {
                "org": org,
                "role": MEMBER_ROLES[org],
                "ca_pem": (folder / "ca.pem").read_text("ascii"),
                "members": [
                    {
                        "cert_pem": _cert_bytes(c).decode("ascii"),
                        "serial": f"{c.serial_number:x}",
                        "fingerprint": fingerprint(c),
                        "not_before": c.not_valid_before_utc.isoformat(),
                        "not_after": c.not_valid_after_utc.isoformat(),
                        "current": c == current,
                        "revoked": c.serial_number in trust.revoked.get(org, frozenset()),
                    }
                    for c in sorted(members, key=lambda c: c.not_valid_before_utc)
                ],
            }
        )
    return result


def _safe_org(cert: x509.Certificate) -> str | None:
    try:
        return cert_org(cert)
    except UntrustedCertificate:
        return None


# --- trust ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustStore:
    cas: Mapping[str, tuple[x509.Certificate, ...]]  # org -> its trusted CA certificates
    members: Mapping[str, x509.Certificate]  # SHA-256 fingerprint (hex) -> member certificate
    revoked: Mapping[str, frozenset[int]]  # org -> revoked member serials
    # (certificate fingerprint, org) -> issuing CA or None. The chain signature check is the costly
    # part and one member signs thousands of batches; time, revocation and org are checked every time.
    _issuers: dict[tuple[bytes, str], x509.Certificate | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dir(cls, directory: Path) -> "TrustStore":
        """Load every *.pem (any depth) and revoked.json under `directory`; ValueError if unusable."""
        cas: dict[str, list[x509.Certificate]] = {}
        members: dict[str, x509.Certificate] = {}
        revoked: dict[str, set[int]] = {}
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"trust directory {directory} does not exist")
        for path in sorted(directory.rglob("*.pem")):
            for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                if _is_ca(cert):
                    try:
                        cert.verify_directly_issued_by(cert)
                    except (InvalidSignature, ValueError, TypeError) as exc:
                        raise ValueError(f"{path}: CA certificate is not validly self-signed") from exc
                    cas.setdefault(cert_org(cert), []).append(cert)
                else:
                    members[fingerprint(cert)] = cert
        for path in sorted(directory.rglob("revoked.json")):
            org, serials = _read_revoked(path)
            revoked.setdefault(org, set()).update(serials)
        return cls({o: tuple(c) for o, c in cas.items()}, members, {o: frozenset(s) for o, s in revoked.items()})

    def check_signer(self, cert: x509.Certificate, org: str, at: datetime) -> None:
        """Raise UntrustedCertificate unless `cert` may sign for `org` at time `at`."""
        if _is_ca(cert):
            raise UntrustedCertificate("a CA certificate cannot sign ledger statements")
        if cert_org(cert) != org:
            raise UntrustedCertificate(f"certificate belongs to {cert_org(cert)!r}, not {org!r}")
        self._check_member(cert, org, at)

    def check_endorser(self, cert: x509.Certificate, org: str, at: datetime) -> None:
        """Raise UntrustedCertificate unless `cert` is a peer of `org` at time `at`, as a Fabric MSP
        decides it: issued by the org's CA (a Fabric node certificate names its org only through its
        issuer, it carries no O= of its own) and of the `peer` node OU."""
        if _is_ca(cert):
            raise UntrustedCertificate("a CA certificate cannot endorse")
        units = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        if "peer" not in units:
            raise UntrustedCertificate("the endorsing certificate is not a peer's (no OU=peer)")
        self._check_member(cert, org, at)

    def _check_member(self, cert: x509.Certificate, org: str, at: datetime) -> None:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise UntrustedCertificate("signer key is not ECDSA P-256")
        # Only the org's own CA counts: another org's CA must not vouch for an O=<org> member.
        issuer = self._issuer(cert, org)
        if issuer is None:
            raise UntrustedCertificate(
                f"certificate serial {cert.serial_number:x} is not issued by a trusted CA of {org!r}"
            )
        for checked, what in ((issuer, "CA"), (cert, "member")):
            if not checked.not_valid_before_utc <= at <= checked.not_valid_after_utc:
                raise UntrustedCertificate(f"{what} certificate of {org!r} is not valid at {at.isoformat()}")
        if cert.serial_number in self.revoked.get(org, frozenset()):
            raise UntrustedCertificate(f"member certificate serial {cert.serial_number:x} of {org!r} is revoked")

    def _issuer(self, cert: x509.Certificate, org: str) -> x509.Certificate | None:
        key = (cert.fingerprint(hashes.SHA256()), org)
        if key not in self._issuers:
            self._issuers[key] = next((ca for ca in self.cas.get(org, ()) if _issued_by(cert, ca)), None)
        return self._issuers[key]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class TrustCache:
    """A TrustStore re-read whenever the trust directory changes (a revocation or rotation counts from
    the next call on, without a restart). Every writer here replaces files by rename or link, which
    changes their folder's mtime, so a few stats per call tell: each folder, and each revoked.json
    (the one file an operator might edit in place)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._store: TrustStore | None = None

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        if self.directory.is_dir():
            folders = [self.directory, *sorted(p for p in self.directory.iterdir() if p.is_dir())]
            for folder in folders:
                for path in (folder, folder / "revoked.json"):
                    try:
                        info = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((str(path), info.st_mtime_ns, info.st_size))
        return tuple(found)

    def current(self) -> TrustStore:
        seen = self._signature()
        if self._store is None or seen != self._seen:
            self._store, self._seen = TrustStore.from_dir(self.directory), seen
        return self._store
