"""GET /v1/availability/stream: live, filtered, resumable, and a stalled client never holds others up."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg

from shared.outbox import publish_many
from tests.polling import eventually
from tests.services.ecommerce.conftest import Channel, SseReader


async def change_ids(pool: asyncpg.Pool, sku: str) -> list[int]:
    rows = await pool.fetch("SELECT id FROM core.events WHERE topic = 'availability.changed' AND key = $1"
                            " ORDER BY txid, id", sku)
    return [r["id"] for r in rows]


async def test_stream_delivers_live_changes(channel: Channel) -> None:
    async with SseReader(channel.ecommerce) as reader:
        await channel.receive("TEE-M", "wh-1", 5)
        await channel.receive("TEE-M", "store-a", 5)  # not ship-enabled: no online change, no event
        await channel.settled()
        await channel.receive("TEE-M", "store-b", 2)
        events = await eventually(lambda: _at_least(reader.of(), 2))
    assert [(e["data"]["sku"], e["data"]["available"], e["data"]["previous"]) for e in events] == [
        ("TEE-M", 5, 0), ("TEE-M", 7, 5)]
    assert reader.of("availability.back_in_stock")[0]["data"]["available"] == 5


async def _at_least(events: list[dict], count: int) -> list[dict] | None:  # type: ignore[type-arg]
    return events if len(events) >= count else None


async def test_resume_from_last_event_id_loses_nothing_across_a_reconnect(channel: Channel) -> None:
    for qty in (1, 2, 3):
        await channel.receive("JEANS-32", "wh-1", qty)
        await channel.settled()
    async with SseReader(channel.ecommerce, "?last_event_id=0&sku=JEANS-32") as first:
        seen = await eventually(lambda: _at_least(first.of(), 3))
    last_id = seen[-1]["id"]
    for qty in (4, 5, 6, 7):  # while the client is away
        await channel.receive("JEANS-32", "wh-1", qty)
        await channel.settled()
    async with SseReader(channel.ecommerce, "?sku=JEANS-32", headers={"Last-Event-ID": str(last_id)}) as again:
        resumed = await eventually(lambda: _at_least(again.of(), 4))
        await asyncio.sleep(0.2)
        assert len(again.of()) == 4  # nothing twice
    assert [e["data"]["available"] for e in seen + resumed] == [1, 3, 6, 10, 15, 21, 28]
    assert [e["id"] for e in seen + resumed] == await change_ids(channel.pool, "JEANS-32")


async def test_stream_filters_by_sku(channel: Channel) -> None:
    async with SseReader(channel.ecommerce, "?sku=JEANS-32") as reader:
        await channel.receive("TEE-M", "wh-1", 5)
        await channel.receive("JEANS-32", "wh-1", 2)
        await eventually(lambda: _at_least(reader.events, 2))
        await channel.settled()
        await asyncio.sleep(0.2)
    assert {e["data"]["sku"] for e in reader.events} == {"JEANS-32"}


async def _stalled_client(port: int, key: str) -> socket.socket:
    """A client that opens the stream and then never reads, with a tiny receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    request = (f"GET /v1/availability/stream?last_event_id=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n")
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    return sock


async def test_a_stalled_client_does_not_delay_another_clients_events(channel: Channel) -> None:
    port = channel.ecommerce.client.port
    assert port is not None and channel.ecommerce.key is not None
    stalled = await _stalled_client(port, channel.ecommerce.key)
    try:
        async with SseReader(channel.ecommerce, "?sku=MARK") as live:
            # ~6 MB of events: far more than the stalled client's socket buffers can take.
            padding = "x" * 2000
            async with channel.pool.acquire() as conn:
                await publish_many(conn, [("availability.changed", f"FILL-{i % 50}",
                                           {"sku": f"FILL-{i % 50}", "available": i, "pad": padding})
                                          for i in range(3000)])
            await asyncio.sleep(0.5)  # the stalled client's writer is now blocked on a full socket
            started = time.monotonic()
            async with channel.pool.acquire() as conn:
                await publish_many(conn, [("availability.changed", "MARK", {"sku": "MARK", "available": 1})])
            await eventually(lambda: _at_least(live.events, 1), within_s=5)
            assert time.monotonic() - started < 2.0
    finally:
        stalled.close()
