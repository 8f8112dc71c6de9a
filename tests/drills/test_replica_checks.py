"""The replicas drill's checks refuse what two instances doing one job twice would leave behind.

tests/drills/test_replicas.py shows the checks pass on a real run; these show each one fails on the
trace of a double worker, so that a pass there means something.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from benchmarks.drills import replica_checks as rc
from benchmarks.drills.replica_traffic import CommitLog, LifecycleLog, Received, SseReader, WebhookReceiver
from benchmarks.drills.traffic import Ack, TrafficLog


def event(id_: int, txid: int, sku: str, previous: int, available: int) -> dict[str, Any]:
    return {"id": id_, "txid": txid, "payload": {"sku": sku, "previous": previous, "available": available,
                                                  "state": "in_stock", "previous_state": "in_stock"}}


def test_the_availability_chain_accepts_one_change_with_several_topics() -> None:
    rows = [event(1, 10, "A", 0, 5), event(2, 10, "A", 0, 5), event(3, 11, "A", 5, 3)]
    assert rc.availability_chain(rows) == ([], {"availability changes published": 2})  # type: ignore[arg-type]


def test_the_availability_chain_refuses_a_change_published_twice() -> None:
    # Two projectors applying one batch: both publish "5 -> 3", the second from a state already left.
    rows = [event(1, 10, "A", 0, 5), event(2, 11, "A", 5, 3), event(3, 12, "A", 5, 3)]
    problems, _ = rc.availability_chain(rows)  # type: ignore[arg-type]
    assert len(problems) == 1 and "event 3 changes it from 5" in problems[0]


def test_orders_once_refuses_a_key_naming_two_orders_and_an_order_nobody_acknowledged() -> None:
    log = LifecycleLog()
    log.orders.acks += [Ack("k1", b"{}", "o1"), Ack("k1", b"{}", "o2"), Ack("k2", b"{}", "o3")]
    problems, _ = rc.orders_once({"o1", "o2", "o3", "o4"}, log)
    assert any("k1 answered with several orders" in p for p in problems)
    assert any("o4 in the database was never acknowledged" in p for p in problems)
    problems, _ = rc.orders_once({"o1"}, LifecycleLog(orders=TrafficLog(acks=log.orders.acks[:1])))
    assert problems == []


def test_sse_in_order_refuses_a_missing_a_repeated_or_a_reordered_event() -> None:
    expected = {"stock": [1, 2, 3]}
    for seen in ([1, 3], [1, 2, 2, 3], [2, 1, 3]):
        reader = SseReader(["http://x"], "key", 0)
        reader.ids = seen
        problems, _ = rc.sse_in_order({"stock@1": reader}, expected)
        assert len(problems) == 1, seen
    reader = SseReader(["http://x"], "key", 0)
    reader.ids = [1, 2, 3]
    assert rc.sse_in_order({"stock@1": reader}, expected)[0] == []


def received(delivery_id: int, attempt: int, arrived: float, answered: float, key: str = "A") -> Received:
    return Received(delivery_id, 100 + delivery_id, "shop-1", key, attempt, arrived, answered, 200, True)


def test_overlaps_refuse_two_sends_of_one_delivery_or_one_queue_at_once() -> None:
    one_delivery = {7: [received(7, 1, 0.0, 1.0), received(7, 2, 0.5, 1.5)]}
    assert rc._overlaps(one_delivery, "delivery")  # noqa: SLF001
    one_queue = {("shop-1", "A"): [received(7, 1, 0.0, 1.0), received(8, 1, 0.9, 1.2)]}
    assert rc._overlaps(one_queue, "queue")  # noqa: SLF001
    in_turn = {("shop-1", "A"): [received(7, 1, 0.0, 1.0), received(8, 1, 1.1, 1.2)]}
    assert rc._overlaps(in_turn, "queue") == []  # noqa: SLF001


async def test_webhooks_once_refuses_an_event_enqueued_twice_and_a_delivery_never_received(
        pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        sub = await conn.fetchval(
            "INSERT INTO ecommerce.webhook_subscriptions (url, events, secret, created_by)"
            " VALUES ('http://127.0.0.1:1/shop-1', '{availability.changed}', 'a-secret-of-16-chars', 'test')"
            " RETURNING id")
        event_id = await conn.fetchval("INSERT INTO core.events (topic, key, payload)"
                                       " VALUES ('availability.changed', 'A', '{}') RETURNING id")
        for _ in range(2):  # fan-out worked twice
            await conn.execute(
                "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body)"
                " VALUES ($1, $2, 'availability.changed', 'A', '{}')", sub, event_id)
        problems, _ = await rc.webhooks_once(conn, WebhookReceiver("secret"))
    text = "\n".join(problems)
    assert "1 events enqueued twice" in text
    assert "1 events, deliveries carry 2" in text
    assert "answered 200 0 times" in text and "is pending, not delivered" in text


async def test_released_once_refuses_a_second_release_in_the_journal(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup)"
                           " VALUES ('L', 'L', 'store', 0, 0, true, true)")
        await conn.execute("INSERT INTO inventory.skus (sku, name, price, currency) VALUES ('A', 'A', 1, 'EUR')")
        await conn.execute("INSERT INTO inventory.stock_levels (sku, location_id, on_hand, reserved)"
                           " VALUES ('A', 'L', 0, 0)")
        await conn.execute(
            "INSERT INTO inventory.stock_movements (sku, location_id, kind, on_hand_delta, reserved_delta, reference)"
            " VALUES ('A', 'L', 'release', 0, -2, $1)", f"order:{uuid.uuid4()}")
        problems, _ = await rc.released_once(conn)
    assert len(problems) == 1 and "movement journal off the allocations" in problems[0]


async def test_ledger_in_one_order_refuses_a_gap_in_the_seqs(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ledger.batches (id, org, first_seq, last_seq, signed_at, batch_root, cert_pem, signature)"
            " VALUES (0, 'finance', 1, 1, '2026-01-01T00:00:00Z', $1, 'pem', 'sig')", bytes(32))
        await conn.execute("INSERT INTO ledger.entries (seq, batch_id, kind, canonical, leaf_hash)"
                           " VALUES (1, 0, 'reconciliation_summary', '\\x00', $1)", bytes(32))
        problems, _ = await rc.ledger_in_one_order(conn, CommitLog())
    assert any("gaps" in p for p in problems)
    assert any("expected to start at 0" in p for p in problems)


async def test_webhooks_once_allows_a_retry_only_after_a_failed_attempt(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        sub = await conn.fetchval(
            "INSERT INTO ecommerce.webhook_subscriptions (url, events, secret, created_by)"
            " VALUES ('http://127.0.0.1:1/shop-1', '{availability.changed}', 'a-secret-of-16-chars', 'test')"
            " RETURNING id")
        receiver = WebhookReceiver("secret", fail_every=1000)  # the receiver chooses no failure
        for sku, first_error in (("A", "TimeoutError"), ("B", None)):
            event_id = await conn.fetchval("INSERT INTO core.events (topic, key, payload)"
                                           " VALUES ('availability.changed', $1, '{}') RETURNING id", sku)
            delivery = await conn.fetchval(
                "INSERT INTO ecommerce.webhook_deliveries (subscription_id, event_id, topic, key, body, status,"
                " attempts) VALUES ($1, $2, 'availability.changed', $3, '{}', 'delivered', 2) RETURNING id",
                sub, event_id, sku)
            # Attempt 1 failed at the sender (A) or was answered 200 and sent again anyway (B).
            await conn.execute(
                "INSERT INTO ecommerce.webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code,"
                " error) VALUES ($1, 1, now(), 5000, $2, $3), ($1, 2, now(), 5, 200, NULL)",
                delivery, None if first_error else 200, first_error)
            if first_error is None:
                receiver.received.append(received(delivery, 1, 0.0, 0.1, sku))
            receiver.received.append(received(delivery, 2, 1.0, 1.1, sku))
        problems, figures = await rc.webhooks_once(conn, receiver)
    doubled = [p for p in problems if "sent again" in p or "answered 200" in p]
    assert len(doubled) == 2 and all(f"delivery {delivery}" in p for p in doubled), problems  # B only
    assert figures["webhook retries after a failure on the sender's side (timeouts)"] == 1
