"""`omnistock ledger ...`: identities, signing, the offline verifier, the audit, the revenue audit.

`init` and `rotate` are the only commands that read CA private keys (the offline folder, or
`--ca-dir`). `sign` and `cosign` sign with one organisation's member key, where that organisation
runs. `verify` needs no database and no omnistock install beyond this package: BUNDLE and the trusted
certificates are all it reads. `audit` and `revenue` read the stored log through the same port the
service uses (restricted role). Failures exit 1 naming the first bad seq.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ledger import identity, signing
from ledger.fabric.cli import fabric as fabric_commands
from ledger.verify import verify_bundle_file
from shared.settings import Settings

CA_DIR_HELP = ("Folder of the CA private keys (<DIR>/<org>/ca.key); default "
               f"OMNISTOCK_DATA_DIR/{identity.OFFLINE_CA}. Keep it offline: no service reads it.")


@click.group("ledger")
def ledger() -> None:
    """The permissioned ledger: identities, signing, verification, audit."""


@ledger.command("init")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=CA_DIR_HELP)
def init(ca_dir: Path | None) -> None:
    """Create each organisation's CA, member key and certificates (kept if present): certificates in
    the msp folder, member keys in keys/<org>/, CA keys in the offline folder."""
    settings = Settings()
    try:
        identity.init_identities(settings.data_dir, ca_dir=ca_dir)
    except (identity.IdentityMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_identities(settings.data_dir)
    click.echo(f"CA private keys: {ca_dir or identity.offline_ca_dir(settings.data_dir)} (move them offline)")


def _print_identities(data_dir: Path) -> None:
    click.echo(f"certificates in {identity.msp_dir(data_dir)}, member keys in {data_dir / identity.KEYS}/<org>")
    for org in identity.describe_identities(data_dir):
        for member in org["members"]:
            flags = " ".join(f for f, on in (("current", member["current"]), ("revoked", member["revoked"])) if on)
            click.echo(f"  {org['org']:<8} {org['role']:<8} serial {member['serial']}  "
                       f"until {member['not_after']}  {flags}")


@ledger.command("rotate")
@click.option("--org", required=True, type=click.Choice(identity.ORGS))
@click.option("--ca-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help=CA_DIR_HELP)
def rotate(org: str, ca_dir: Path) -> None:
    """Issue a new member key and certificate for ORG; the old certificate stays to verify old entries."""
    settings = Settings()
    try:
        member = identity.rotate_member(settings.data_dir, org, ca_dir, member_key_dir=_key_dir(settings, org))
    except (identity.IdentityMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{org}: new member serial {member.cert.serial_number:x}")


def _key_dir(settings: Settings, org: str) -> Path | None:
    return getattr(settings, f"{org}_key_dir", None)


def _member(org: str, key_dir: Path | None) -> identity.Identity:
    settings = Settings()
    try:
        return identity.load_identity(settings.data_dir, org, key_dir or _key_dir(settings, org))
    except (identity.IdentityMissing, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@ledger.command("sign")
@click.argument("entries_file", type=click.File("rb"))
@click.option("--org", default="finance", show_default=True, type=click.Choice(identity.ORGS))
@click.option("--key-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of ORG's member.key (default: OMNISTOCK_<ORG>_KEY_DIR, else "
                   "OMNISTOCK_DATA_DIR/ledger/keys/ORG).")
def sign(entries_file: Any, org: str, key_dir: Path | None) -> None:
    """Sign a JSON list of entries (or {"entries": [...]}) with ORG's member key; print the body for
    POST /v1/ledger/entries: {"entries": [...], "submission": {org, cert_pem, timestamp, signature}}."""
    try:
        document = json.loads(entries_file.read())
    except ValueError as exc:
        raise click.ClickException(f"not JSON: {exc}") from None
    entries = document.get("entries") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise click.ClickException('expected a non-empty JSON list of entry objects, or {"entries": [...]}')
    try:
        submission = signing.sign_submission(_member(org, key_dir), entries)
    except ValueError as exc:  # e.g. a float: no canonical encoding, so nothing the ledger could hash
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"entries": entries, "submission": submission.as_json()}))


@ledger.command("cosign")
@click.option("--key-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of finance's member.key (default: OMNISTOCK_FINANCE_KEY_DIR or the data dir's).")
def cosign(key_dir: Path | None) -> None:
    """Co-sign the ledger's newest checkpoint as finance, once it is shown to extend the last one
    finance co-signed (what the finance service does every few seconds)."""
    from ledger.cosign import Cosigner, CosignRefused
    from ledger.service.use_cases import open_ledger
    from services.cli import _run

    member = _member("finance", key_dir)

    async def go(settings: Settings) -> Any:
        async with open_ledger(settings, max_size=2, service="finance") as port:
            trust = identity.TrustCache(identity.msp_dir(settings.data_dir))
            try:
                return await Cosigner(port, member, trust).cosign_latest()
            except CosignRefused as exc:
                raise click.ClickException(f"refused to co-sign: {exc}") from None

    checkpoint = _run(go)
    if checkpoint is None:
        click.echo("the ledger has no checkpoint yet")
        return
    signers = ", ".join(s["org"] for s in checkpoint["signatures"])
    click.echo(f"checkpoint of size {checkpoint['tree_size']} signed by {signers}")


@ledger.command("revoke")
@click.option("--org", required=True, type=click.Choice(identity.ORGS))
@click.option("--serial", required=True, help="The member certificate's serial, hex (see `omnistock ledger init`).")
def revoke(org: str, serial: str) -> None:
    """Revoke a member certificate: entries and checkpoints it signed stop verifying."""
    try:
        number = int(serial, 16)
    except ValueError:
        raise click.BadParameter("a hex serial number", param_hint="--serial") from None
    settings = Settings()
    identity.revoke(settings.data_dir, org, number)
    click.echo(f"{org}: serial {number:x} revoked")


@ledger.command("verify")
@click.argument("bundle", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trust", "trust_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of trusted PEM certificates (the organisations' CAs, revoked.json files).")
@click.option("--endorser", "endorsers", multiple=True, metavar="ORG",
              help="For a bundle of the Fabric backend: an organisation (the O= of its Fabric CA) whose peer must "
                   "have endorsed the checkpoint; repeat for each. Default: the retailer's and the audit firm's.")
def verify(bundle: Path, trust_dir: Path, endorsers: tuple[str, ...]) -> None:
    """Check an export bundle offline; exit 0 only if every entry, proof and signature holds."""
    report = verify_bundle_file(bundle, trust_dir, endorsers or None)
    _exit_with(report.ok, report.summary())


@ledger.command("audit")
def audit() -> None:
    """Re-check the stored log against its signed checkpoints and batches; exit 1 naming the first bad seq."""
    from ledger.service.use_cases import open_ledger
    from services.cli import _run

    async def go(settings: Settings) -> Any:
        async with open_ledger(settings, max_size=2) as port:
            return await port.audit()

    report = _run(go)
    _exit_with(report.ok, report.summary())


@ledger.command("revenue")
@click.option("--from", "date_from", required=True, help="First business day, YYYY-MM-DD.")
@click.option("--to", "date_to", required=True, help="Last business day, YYYY-MM-DD.")
def revenue(date_from: str, date_to: str) -> None:
    """Reconciled sales per day, channel and location, summed from verified ledger entries (JSON)."""
    from ledger.service import use_cases
    from services.cli import _run
    from services.finance.use_cases import FinanceRevenue
    from shared.db import create_pool
    from shared.roles import service_dsn

    async def go(settings: Settings) -> Any:
        finance_pool = await create_pool(service_dsn(settings, "finance"), min_size=1, max_size=1)
        try:
            async with use_cases.open_ledger(settings, max_size=2) as port:
                return await use_cases.revenue(port, date_from, date_to, FinanceRevenue(finance_pool))
        finally:
            await finance_pool.close()

    result = _run(go)
    click.echo(json.dumps(result, indent=2))
    if not result["verified"]:
        _exit_with(False, f"FAILED: the log does not verify, first bad seq: {result['first_bad_seq']}")
    if result["comparison"]:
        _exit_with(False, f"FAILED: {len(result['comparison'])} groups differ from finance's revenue")


ledger.add_command(fabric_commands)


def _exit_with(ok: bool, message: str) -> None:
    if ok:
        click.echo(message)
        return
    click.echo(message, err=True)
    sys.exit(1)
