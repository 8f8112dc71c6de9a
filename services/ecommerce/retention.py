"""E-commerce's housekeeping jobs (shared/housekeeping.py runs them): the outbox up to this service's
consumer cursors, and the webhook delivery log.

E-commerce prunes the outbox because it holds the outbox's only durable consumers (the availability
projector and the webhook fan-out, rows of ecommerce.cursors): an event leaves once both have passed it
and the retention window has gone by. A new durable consumer keeps its cursor in that table and its
event families in CONSUMERS; a cursor not named there holds the outbox at its own position.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.ecommerce import projection, webhooks
from services.ecommerce import repository as repo
from services.ecommerce import webhook_repository as hooks
from shared.db import Connection, Pool
from shared.housekeeping import Batch, Job, OutboxEvents
from shared.outbox import END, Position, next_of
from shared.settings import Settings

# Cursor name -> the event families that consumer reads (it moves its cursor only on those).
CONSUMERS: dict[str, list[str]] = {projection.CURSOR: projection.FAMILIES, webhooks.CURSOR: webhooks.FAMILIES}


async def passed_by_all(conn: Connection) -> Position:
    """The last position every consumer has passed. A consumer moves its cursor only on events it reads,
    so its cursor lags behind events of other families (order events nobody consumes, the projector's
    own availability events): it has passed everything before the next event of its families, and
    everything at all when there is none yet (one committed later cannot be visible to this delete)."""
    through = END
    for name, cursor in (await repo.cursors(conn)).items():
        families = CONSUMERS.get(name)
        upcoming = await next_of(conn, cursor, families) if families is not None else None
        if families is None:
            bound = cursor
        elif upcoming is None:
            bound = END
        else:
            bound = (upcoming[0], upcoming[1] - 1)  # positions are integers: up to just before it
        through = min(through, bound)
    return through


@dataclass(frozen=True)
class WebhookDeliveries:
    """Delivered and cancelled deliveries `delivered_s` after they finished, dead letters `dead_s` after
    their last attempt (a redelivery makes one pending again, and keeps it). Walks the log in id order
    from the start each pass, a chunk per batch, and stops where rows are too young for any window:
    what it passes over each time is the dead letters kept longer, and anything still unsent."""

    delivered_s: float
    dead_s: float
    table: str = "ecommerce.webhook_deliveries"
    lock: int = 3

    async def prune(self, conn: Connection, limit: int, after: int) -> Batch:
        last, young = await hooks.scan_deliveries(conn, after, limit, min(self.delivered_s, self.dead_s))
        if last is None:
            return Batch(0, None)
        deleted = await hooks.prune_deliveries(conn, after, last, self.delivered_s, self.dead_s)
        return Batch(deleted, None if young else last)

    async def oldest_age_s(self, db: Pool | Connection) -> float | None:
        return await hooks.oldest_delivery_age_s(db)


def jobs(settings: Settings) -> list[Job]:
    return [OutboxEvents(settings.event_retention_s, passed_by_all),
            WebhookDeliveries(settings.webhook_delivered_retention_s, settings.webhook_dead_retention_s)]
