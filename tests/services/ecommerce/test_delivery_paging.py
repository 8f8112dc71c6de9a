"""The delivery log pages on an opaque cursor (issue 11, item 6), like every other list."""

from __future__ import annotations

from tests.conftest import assert_problem
from tests.services.ecommerce.conftest import Channel

HOOK = {"url": "http://127.0.0.1:9/hooks", "events": ["availability.changed"], "secret": "s" * 20}


async def test_the_delivery_log_pages_newest_first_on_a_cursor(channel: Channel) -> None:
    status, sub, _ = await channel.ecommerce.post("/v1/webhooks", json=HOOK)
    assert status == 201, sub
    # Written straight into the log: the dispatcher is not what is under test here.
    await channel.pool.execute(
        "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status)"
        " SELECT $1, n, 'availability.changed', 'SKU-' || n, '{}'::bytea, 'delivered' FROM generate_series(1, 7) n",
        sub["id"])
    seen, cursor = [], None
    while True:
        status, page, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub['id']}/deliveries", params={
            "limit": 3, "status": "delivered", **({"cursor": cursor} if cursor else {})})
        assert status == 200, page
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    rows = await channel.pool.fetch("SELECT id FROM ecommerce.webhook_deliveries WHERE subscription_id = $1"
                                    " ORDER BY id DESC", sub["id"])
    assert seen == [r["id"] for r in rows] and len(seen) == 7
    for bad in ("1", "eyJ4Ijox", "W10"):
        status, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub['id']}/deliveries", params={"cursor": bad})
        assert_problem(status, body, 422, field="cursor")
