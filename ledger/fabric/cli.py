"""`omnistock ledger fabric up|down|status`: the local Fabric network of ledger/fabric/network.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ledger.fabric.network import FabricNetwork, FabricNetworkError
from shared.settings import Settings


def _network() -> FabricNetwork:
    return FabricNetwork(Settings())


@click.group("fabric")
def fabric() -> None:
    """A local Hyperledger Fabric 2.5 network (orderer, retailer and audit peers, the ledger's
    chaincode) from the release binaries at OMNISTOCK_FABRIC_BIN."""


@fabric.command("up")
def up() -> None:
    """Make and start what is missing of the network; print where each part listens."""
    network = _network()
    try:
        described = network.up()
    except FabricNetworkError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"channel {described['channel']}, chaincode {described['chaincode']}, "
               f"endorsement policy {described['endorsement_policy']}")
    click.echo(f"  orderer   {described['orderer']['endpoint']}")
    for key, org in described["orgs"].items():
        click.echo(f"  {key:<9} peer {org['peer_endpoint']} ({org['msp_id']}), chaincode {org['chaincode_address']}")
    click.echo(f"network description: {network.layout.network_file}; logs in {network.layout.logs}")


@fabric.command("down")
@click.option("--purge", is_flag=True, help="Also delete the network's data folder (crypto material, ledgers).")
def down(purge: bool) -> None:
    """Stop every process of the network; with --purge, delete its data too."""
    network = _network()
    stopped = network.down(purge=purge)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if purge:
        click.echo(f"deleted {network.layout.root}")


@fabric.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the processes and pids as JSON.")
def status(as_json: bool) -> None:
    """Each process of the network and its pid; exit 1 unless all of them run."""
    running = _network().status()
    if as_json:
        click.echo(json.dumps(running))
    else:
        for name, pid in running.items():
            click.echo(f"{name:<20} {'pid ' + str(pid) if pid else 'stopped'}")
    if not all(running.values()):
        sys.exit(1)


@fabric.command("compose-config")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def compose_config(directory: Path) -> None:
    """Write what docker-compose's `fabric` profile reads into DIRECTORY (its /fabric volume): the
    crypto and channel configuration, each organisation's chaincode package, the external builder,
    and the scripts fabric-tools runs (crypto.sh, setup.sh)."""
    from ledger.fabric import compose

    settings = Settings()
    written = compose.write_material(directory, settings.fabric_endorsement_policy, settings.fabric_batch_timeout_ms)
    click.echo(f"wrote {len(written)} files into {directory}")
