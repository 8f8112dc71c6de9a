"""GET /v1/events: stock changes as SSE, resumable from Last-Event-ID with nothing lost."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from tests.conftest import Api
from tests.services.inventory.conftest import move


async def read_events(api: Api, count: int, headers: dict[str, str] | None = None,
                      query: str = "", within_s: float = 10.0) -> list[dict[str, Any]]:
    """Open the stream, read `count` events, close the connection (a client going away)."""
    events: list[dict[str, Any]] = []
    resp = await api.client.get(f"/v1/events{query}", headers={"Authorization": f"Bearer {api.key}", **(headers or {})})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    current: dict[str, Any] = {}

    async def consume() -> None:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "data" in current:
                events.append(dict(current))
                current.clear()
                if len(events) == count:
                    return

    try:
        await asyncio.wait_for(consume(), within_s)
    finally:
        resp.close()
    return events


async def test_stream_delivers_live_changes(inventory: Api) -> None:
    reader = asyncio.create_task(read_events(inventory, 2))
    await asyncio.sleep(0.3)  # let the stream start from "now"
    await move(inventory, "r1", sku="TEE-M", location_id="store-a", kind="receipt", qty=5)
    await move(inventory, "r2", sku="JEANS-32", location_id="store-b", kind="receipt", qty=2)
    events = await reader
    assert [(e["data"]["sku"], e["data"]["on_hand"], e["data"]["available"]) for e in events] == [
        ("TEE-M", 5, 5), ("JEANS-32", 2, 2)]
    assert events[0]["id"] < events[1]["id"]


async def test_resume_from_last_event_id_loses_nothing_across_a_reconnect(inventory: Api) -> None:
    for i in range(3):
        await move(inventory, f"a{i}", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    first = await read_events(inventory, 3, query="?last_event_id=0")
    assert [e["data"]["on_hand"] for e in first] == [1, 2, 3]
    # While the client is away, more changes happen.
    for i in range(4):
        await move(inventory, f"b{i}", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    resumed = await read_events(inventory, 4, headers={"Last-Event-ID": str(first[-1]["id"])})
    assert [e["data"]["on_hand"] for e in resumed] == [4, 5, 6, 7]


async def test_filters_by_sku_and_location(inventory: Api) -> None:
    await move(inventory, "a", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
    await move(inventory, "b", sku="JEANS-32", location_id="store-a", kind="receipt", qty=1)
    await move(inventory, "c", sku="JEANS-32", location_id="store-b", kind="receipt", qty=1)
    events = await read_events(inventory, 1, query="?last_event_id=0&sku=JEANS-32&location_id=store-b")
    assert [(e["data"]["sku"], e["data"]["location_id"]) for e in events] == [("JEANS-32", "store-b")]


async def test_event_from_a_transaction_that_commits_late_is_not_skipped(inventory: Api, pool: asyncpg.Pool) -> None:
    """An event id handed out early but committed late must still reach a reader that saw later ids."""
    reader = asyncio.create_task(read_events(inventory, 2, within_s=15))
    await asyncio.sleep(0.3)
    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute("INSERT INTO core.events (topic, key, payload) VALUES ('stock.changed', 'TEE-M', $1)",
                           {"sku": "TEE-M", "location_id": "store-a", "on_hand": -1, "available": 0})
        await move(inventory, "fast", sku="TEE-M", location_id="store-a", kind="receipt", qty=1)
        await asyncio.sleep(0.5)
        await tx.commit()
    finally:
        await pool.release(slow)
    events = await reader
    assert sorted(e["data"]["on_hand"] for e in events) == [-1, 1]
