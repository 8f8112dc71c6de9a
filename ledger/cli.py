"""`omnistock ledger ...`: identities, the offline verifier, the audit, the revenue audit.

`verify` needs no database and no omnistock install beyond this package: BUNDLE and the trusted
certificates are all it reads. `audit` and `revenue` read the stored log through the same port the
service uses (restricted role). Failures exit 1 naming the first bad seq.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ledger import identity
from ledger.verify import verify_bundle_file
from shared.settings import Settings


@click.group("ledger")
def ledger() -> None:
    """The permissioned ledger: identities, verification, audit."""


@ledger.command("init")
def init() -> None:
    """Create each organisation's CA and member key and certificate under OMNISTOCK_DATA_DIR (kept if present)."""
    settings = Settings()
    identity.init_identities(settings.data_dir)
    _print_identities(settings.data_dir)


def _print_identities(data_dir: Path) -> None:
    click.echo(f"identities in {identity.msp_dir(data_dir)}")
    for org in identity.describe_identities(data_dir):
        for member in org["members"]:
            flags = " ".join(f for f, on in (("current", member["current"]), ("revoked", member["revoked"])) if on)
            click.echo(f"  {org['org']:<8} {org['role']:<8} serial {member['serial']}  "
                       f"until {member['not_after']}  {flags}")


@ledger.command("rotate")
@click.option("--org", required=True, type=click.Choice(identity.ORGS))
def rotate(org: str) -> None:
    """Issue a new member key and certificate for ORG; the old certificate stays to verify old entries."""
    settings = Settings()
    member = identity.rotate_member(settings.data_dir, org)
    click.echo(f"{org}: new member serial {member.cert.serial_number:x}")


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
def verify(bundle: Path, trust_dir: Path) -> None:
    """Check an export bundle offline; exit 0 only if every entry, proof and signature holds."""
    report = verify_bundle_file(bundle, trust_dir)
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


def _exit_with(ok: bool, message: str) -> None:
    if ok:
        click.echo(message)
        return
    click.echo(message, err=True)
    sys.exit(1)
