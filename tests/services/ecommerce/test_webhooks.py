"""Outbound webhooks: signed, retried with backoff, dead-lettered, redelivered, coalesced, in order per SKU."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import assert_problem
from tests.polling import eventually
from tests.services.ecommerce.conftest import Channel, Received, Receiver, signed_correctly, subscribe


async def test_a_receiver_that_fails_first_gets_the_retry_correctly_signed(channel: Channel,
                                                                            receiver: Receiver) -> None:
    calls = 0

    async def fail_once(_: Received) -> int:
        nonlocal calls
        calls += 1
        return 500 if calls == 1 else 204

    receiver.respond = fail_once
    sub = await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 5)
    await eventually(lambda: _count(receiver.requests, 2))
    first, retry = receiver.requests
    assert first.body == retry.body and signed_correctly(first) and signed_correctly(retry)
    payload = retry.json
    assert payload["topic"] == "availability.changed" and payload["data"]["available"] == 5
    assert retry.headers["X-Omnistock-Event-Id"] == str(payload["id"])
    assert abs(int(retry.headers["X-Omnistock-Timestamp"]) - time.time()) < 60
    assert (first.headers["X-Omnistock-Attempt"], retry.headers["X-Omnistock-Attempt"]) == ("1", "2")

    async def delivered() -> Any:
        status, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}/deliveries")
        return body["items"] if body["items"] and body["items"][0]["status"] == "delivered" else None

    [delivery] = await eventually(delivered)
    assert delivery["attempts"] == 2 and delivery["event_id"] == payload["id"]
    status, detail, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}/deliveries/{delivery['id']}")
    assert status == 200
    assert [(a["attempt"], a["status_code"]) for a in detail["log"]] == [(1, 500), (2, 204)]


async def _count(items: list[Any], n: int) -> list[Any] | None:
    return items if len(items) >= n else None


async def test_dead_letter_after_max_attempts_then_manual_redelivery(channel: Channel, receiver: Receiver) -> None:
    healthy = False

    async def down(_: Received) -> int:
        return 200 if healthy else 503

    receiver.respond = down
    sub = await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 5)

    async def dead() -> Any:
        _, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}/deliveries", params={"status": "dead"})
        return body["items"]

    [letter] = await eventually(dead)
    assert letter["attempts"] == 3 and letter["last_status_code"] == 503 and len(receiver.requests) == 3
    healthy = True
    status, body, _ = await channel.ecommerce.post(f"/v1/webhooks/{sub}/deliveries/{letter['id']}/redeliver")
    assert status == 202, body
    await eventually(lambda: _count(receiver.requests, 4))
    assert receiver.requests[-1].body == receiver.requests[0].body and signed_correctly(receiver.requests[-1])
    status, body, _ = await channel.ecommerce.post(f"/v1/webhooks/{sub}/deliveries/{letter['id']}/redeliver")
    assert status in (202, 409)  # delivered again already (202) or still on its way (409)


async def test_the_delivering_attempt_lives_in_its_row_and_a_redelivery_keeps_it_in_the_log(
    channel: Channel, receiver: Receiver
) -> None:
    sub = await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 5)

    async def log_once_delivered(n: int) -> Any:
        _, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}/deliveries")
        if not body["items"] or body["items"][0]["status"] != "delivered" or len(receiver.requests) < n:
            return None
        _, detail, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}/deliveries/{body['items'][0]['id']}")
        return detail

    detail = await eventually(lambda: log_once_delivered(1))
    assert [(a["attempt"], a["status_code"]) for a in detail["log"]] == [(1, 200)]
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_attempts") == 0  # nothing extra
    status, body, _ = await channel.ecommerce.post(f"/v1/webhooks/{sub}/deliveries/{detail['id']}/redeliver")
    assert status == 202, body
    again = await eventually(lambda: log_once_delivered(2))
    first, second = again["log"]
    assert (first["attempt"], second["attempt"]) == (1, 1) and first["started_at"] < second["started_at"]
    assert first == detail["log"][0]  # the first delivery's attempt, exactly as it was logged
    status, body, _ = await channel.ecommerce.post(f"/v1/webhooks/{sub}/deliveries/{detail['id']}/redeliver")
    assert status in (202, 409)


async def test_rapid_changes_of_one_sku_are_coalesced_in_order_and_other_skus_are_not_held_up(
    channel: Channel, receiver: Receiver
) -> None:
    release = asyncio.Event()

    async def slow_for_tee(request: Received) -> int:
        if request.json["data"]["sku"] == "TEE-M":
            await release.wait()
        return 200

    receiver.respond = slow_for_tee
    await subscribe(channel, receiver)
    await channel.receive("TEE-M", "wh-1", 1)
    await eventually(lambda: _count(receiver.of("TEE-M"), 1))  # the first one is now in flight, held
    for i in range(8):
        await channel.move(f"m{i}", sku="TEE-M", location_id="wh-1", kind="receipt", qty=1)
        await channel.settled()
    await channel.receive("JEANS-32", "store-b", 3)
    await eventually(lambda: _count(receiver.of("JEANS-32"), 1))  # not behind TEE-M's stuck message
    release.set()
    await eventually(lambda: _last_available(receiver, "TEE-M", 9))
    tee = receiver.of("TEE-M")
    ids = [r.json["id"] for r in tee]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len(tee) <= 3, [r.json["data"]["available"] for r in tee]  # 9 changes, at most 3 messages


async def _last_available(receiver: Receiver, sku: str, value: int) -> bool:
    got = receiver.of(sku)
    return bool(got) and got[-1].json["data"]["available"] == value


async def test_subscriptions_list_and_delete(channel: Channel, receiver: Receiver) -> None:
    sub = await subscribe(channel, receiver, ["availability.out_of_stock", "availability.back_in_stock"])
    status, body, _ = await channel.ecommerce.get("/v1/webhooks")
    assert status == 200
    assert [(s["id"], s["events"]) for s in body["items"]] == [
        (sub, ["availability.back_in_stock", "availability.out_of_stock"])]
    assert all("secret" not in s for s in body["items"])
    status, body, _ = await channel.ecommerce.request("DELETE", f"/v1/webhooks/{sub}")
    assert status == 200
    status, body, _ = await channel.ecommerce.get(f"/v1/webhooks/{sub}")
    assert_problem(status, body, 404, "not-found")
    await channel.receive("TEE-M", "wh-1", 5)
    await channel.settled()
    await asyncio.sleep(0.3)
    assert receiver.requests == []


async def test_only_the_subscribed_events_are_sent(channel: Channel, receiver: Receiver) -> None:
    await subscribe(channel, receiver, ["availability.out_of_stock"])
    await channel.receive("TEE-M", "wh-1", 2)
    await channel.settled()
    await channel.move("gone", sku="TEE-M", location_id="wh-1", kind="count", qty=0)
    await eventually(lambda: _count(receiver.requests, 1))
    await asyncio.sleep(0.2)
    assert [r.json["topic"] for r in receiver.requests] == ["availability.out_of_stock"]
