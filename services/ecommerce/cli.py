"""`omnistock ecommerce ...`: operator commands of the e-commerce service."""

from __future__ import annotations

import asyncio

import click

from services import runtime
from services.ecommerce import projection
from shared.db import create_pool
from shared.logging import configure_logging
from shared.roles import service_dsn
from shared.settings import Settings


def _with_pool(work):  # type: ignore[no-untyped-def]
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    with runtime.database(settings) as ready:

        async def main():  # type: ignore[no-untyped-def]
            await runtime.migrate(ready)
            pool = await create_pool(service_dsn(ready, "ecommerce"), min_size=1, max_size=2, command_timeout=3600)
            try:
                return await work(pool)
            finally:
                await pool.close()

        return asyncio.run(main())


@click.group()
def ecommerce() -> None:
    """E-commerce channel: the availability projection."""


@ecommerce.command()
@click.option("--check", is_flag=True, help="Only compare with a from-scratch computation; change nothing.")
def rebuild(check: bool) -> None:
    """Recompute channel availability from inventory and the channel rules.

    Prints how many rows the incremental projection had wrong; with --check, exits 1 if any.
    """

    async def go(pool):  # type: ignore[no-untyped-def]
        if check:
            await projection.catch_up(pool)
            return await projection.check(pool)
        return await projection.rebuild(pool)

    drift = _with_pool(go)
    verb = "differs" if check else "differed"
    click.echo(f"projection {verb} from a rebuild in {len(drift.availability)} SKUs, {drift.levels} levels, "
               f"{drift.locations} locations")
    for sku, was, expected in drift.availability[:20]:
        click.echo(f"  {sku}: projected {was}, expected {expected}")
    if check and not drift.none:
        raise SystemExit(1)
