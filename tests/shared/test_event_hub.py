"""The event hub reads the outbox only while someone follows it, and readers miss nothing either way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from shared.event_stream import EventHub
from shared.outbox import Event, Position, publish_many, read_after
from tests.polling import eventually


@pytest.fixture
async def hub(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[EventHub]:
    event_hub = EventHub(pool, database_url, poll_interval_s=0.01)
    await event_hub.start()
    yield event_hub
    await event_hub.stop()


async def write(pool: asyncpg.Pool, keys: range) -> None:
    async with pool.acquire() as conn:
        await publish_many(conn, [("stock.changed", f"SKU-{k}", {"n": k}) for k in keys])


async def collect(hub: EventHub, start: Position, count: int, families: list[str] | None = None) -> list[Event]:
    got: list[Event] = []
    async for batch in hub.follow_batches(start, families, heartbeat_s=0.05):
        got.extend(batch)
        if len(got) >= count:
            return got
    raise AssertionError("the stream ended")


async def wait_until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, within_s=5.0)


async def test_an_unfollowed_hub_buffers_nothing_but_keeps_its_head(hub: EventHub, pool: asyncpg.Pool) -> None:
    start = hub.head
    await write(pool, range(200))
    await wait_until(lambda: hub.head > start)  # new live readers would start after these events
    assert hub.readers == 0 and hub.buffered == 0


async def test_a_reader_arriving_at_an_idle_hub_gets_everything_after_its_position(
        hub: EventHub, pool: asyncpg.Pool) -> None:
    start = hub.head
    await write(pool, range(300))  # written while nobody follows
    await wait_until(lambda: hub.head > start)
    reader = asyncio.create_task(collect(hub, start, 600))
    await wait_until(lambda: hub.readers == 1)
    await write(pool, range(300, 600))  # and while someone does
    events = await asyncio.wait_for(reader, 10)
    assert [e.payload["n"] for e in events] == list(range(600))
    assert hub.buffered > 0  # followed, the hub fills its window again
    await wait_until(lambda: hub.readers == 0)  # the reader's generator closed when it returned


async def test_a_hub_of_some_families_holds_and_hands_out_only_those(pool: asyncpg.Pool, database_url: str) -> None:
    hub = EventHub(pool, database_url, poll_interval_s=0.01, families=["stock"])
    await hub.start()
    try:
        with pytest.raises(ValueError, match="reads only"):
            await anext(hub.follow_batches(hub.head, ["order"]).__aiter__())
        with pytest.raises(ValueError, match="reads only"):
            await anext(hub.follow_batches(hub.head, None).__aiter__())
        start = hub.head
        reader = asyncio.create_task(collect(hub, start, 100, ["stock"]))
        await wait_until(lambda: hub.readers == 1)
        async with pool.acquire() as conn:
            await publish_many(conn, [(topic, f"K-{k}", {"n": k}) for k in range(100)
                                      for topic in ("order.placed", "stock.changed")])
        events = await asyncio.wait_for(reader, 10)
        assert [e.payload["n"] for e in events] == list(range(100))
        assert {e.topic for e in events} == {"stock.changed"}
        assert hub.buffered == 100  # the order events were never read into memory
    finally:
        await hub.stop()


async def test_a_poke_reads_at_once_instead_of_at_the_next_poll(pool: asyncpg.Pool, database_url: str) -> None:
    hub = EventHub(pool, database_url, poll_interval_s=30.0)  # no poll would come within the test
    await hub.start()
    try:
        reader = asyncio.create_task(collect(hub, hub.head, 5))
        await wait_until(lambda: hub.readers == 1)
        await asyncio.sleep(0.2)  # the reader's own wake-up has been spent on an empty read
        await write(pool, range(5))
        hub.poke()
        assert len(await asyncio.wait_for(reader, 5)) == 5
    finally:
        await hub.stop()




async def test_a_poked_transaction_not_readable_yet_is_read_as_soon_as_it_is(pool: asyncpg.Pool,
                                                                             database_url: str) -> None:
    """An older transaction still running keeps the poked one's events unreadable after its commit; the
    hub looks again until it has read them, not only at its next poll (none comes within the test)."""
    hub = EventHub(pool, database_url, poll_interval_s=30.0)
    await hub.start()
    older = await asyncpg.connect(database_url)
    try:
        reader = asyncio.create_task(collect(hub, hub.head, 1))
        await wait_until(lambda: hub.readers == 1)
        await asyncio.sleep(0.2)  # the reader's own wake-up has been spent on an empty read
        older_tx = older.transaction()
        await older_tx.start()
        await older.fetchval("SELECT pg_current_xact_id()")  # an id older than the writer's
        async with pool.acquire() as conn, conn.transaction():
            await publish_many(conn, [("stock.changed", "K-1", {"n": 1})])
            txid = int(await conn.fetchval("SELECT pg_current_xact_id()::text"))
        hub.poke(txid)
        await asyncio.sleep(0.3)
        assert not reader.done()  # not readable while the older transaction runs
        await older_tx.rollback()
        assert [e.payload["n"] for e in await asyncio.wait_for(reader, 5)] == [1]
    finally:
        await older.close()
        await hub.stop()

async def test_a_consumer_reads_from_memory_what_the_database_would_give_it(pool: asyncpg.Pool,
                                                                          database_url: str) -> None:
    await write(pool, range(-5, 0))  # before the hub starts: never in its memory
    hub = EventHub(pool, database_url, poll_interval_s=0.01)
    await hub.start()
    start = hub.head
    assert hub.read_from_memory(start, 10, ["stock"]) is None  # nobody follows: no window to read
    reader = asyncio.create_task(collect(hub, start, 1_000_000))  # keeps the hub reading
    try:
        await wait_until(lambda: hub.readers == 1)
        async with pool.acquire() as conn:  # other families first, more of them than the consumer's limit
            await publish_many(conn, [("availability.changed", f"A-{k}", {"n": k}) for k in range(300)])
        await write(pool, range(50))
        newest = await pool.fetchval("SELECT max(id) FROM core.events")
        await wait_until(lambda: hub.head[1] == newest)
        from_memory = hub.read_from_memory(start, 20, ["stock"])
        assert from_memory == await read_after(pool, start, 20, ["stock"])
        assert from_memory is not None and [e.payload["n"] for e in from_memory] == list(range(20))
        assert hub.read_from_memory(hub.head, 20, ["stock"]) == []  # nothing newer read yet
        assert hub.read_from_memory((0, 0), 20, ["stock"]) is None  # before the window: the database's
    finally:
        reader.cancel()
        await hub.stop()


async def committed(pool: asyncpg.Pool, topic: str, numbers: range) -> list[Event]:
    """Events written in one committed transaction, as their writer knows them."""
    rows = await pool.fetch(
        "INSERT INTO core.events (topic, key, payload)"
        " SELECT $1, 'K-' || n, jsonb_build_object('n', n) FROM unnest($2::int[]) AS u(n)"
        " RETURNING id, txid, topic, key, payload, created_at", topic, list(numbers))
    return sorted((Event(r["id"], r["txid"], r["topic"], r["key"], r["payload"], r["created_at"]) for r in rows),
                  key=lambda e: e.position)


async def follow_into(hub: EventHub, start: Position, families: list[str], into: list[Event]) -> None:
    async for batch in hub.follow_batches(start, families, heartbeat_s=0.05):
        into.extend(batch)


def express_hub(pool: asyncpg.Pool, database_url: str) -> EventHub:
    return EventHub(pool, database_url, poll_interval_s=0.01, families=["availability", "stock"],
                    express_family="availability")


async def test_the_express_lane_hands_committed_events_to_readers_before_the_outbox_shows_them(
        pool: asyncpg.Pool, database_url: str) -> None:
    """While an older transaction runs, the outbox shows nothing committed after it; the writer's own
    hub streams its events all the same, and each reaches a reader once, in order, when the outbox
    delivers them too."""
    hub = express_hub(pool, database_url)
    await hub.start()
    older = await asyncpg.connect(database_url)
    got: list[Event] = []
    start = hub.head
    reader = asyncio.create_task(follow_into(hub, start, ["availability"], got))
    try:
        await wait_until(lambda: hub.readers == 1)
        first = await committed(pool, "availability.changed", range(1))  # read from the outbox
        await wait_until(lambda: got == first)
        older_tx = older.transaction()
        await older_tx.start()
        await older.fetchval("SELECT pg_current_xact_id()")
        express = await committed(pool, "availability.changed", range(1, 4))
        assert await read_after(pool, first[-1].position, 10, ["availability"]) == []  # not readable yet
        assert hub.publish_committed(first[-1].position, express)
        await wait_until(lambda: got == first + express)
        assert hub.read_from_memory(start, 10, ["availability"]) == first + express  # fan-out reads it too
        await older_tx.rollback()
        await committed(pool, "stock.changed", range(2))  # the hub's outbox read goes past them
        later = await committed(pool, "availability.changed", range(4, 6))
        await wait_until(lambda: len(got) >= 6)
        await asyncio.sleep(0.1)  # a duplicate would arrive about now
        assert [e.id for e in got] == [e.id for e in first + express + later]
        assert hub.read_from_memory(start, 10, ["availability"]) == first + express + later
    finally:
        reader.cancel()
        await older.close()
        await hub.stop()


async def test_the_express_lane_refuses_what_might_leave_a_gap_and_the_outbox_brings_it(
        pool: asyncpg.Pool, database_url: str) -> None:
    # No poll comes within the test: the hub reads the outbox only when poked.
    hub = EventHub(pool, database_url, poll_interval_s=30.0, families=["availability", "stock"],
                   express_family="availability")
    await hub.start()
    got: list[Event] = []
    start = hub.head
    reader = asyncio.create_task(follow_into(hub, start, ["availability"], got))
    try:
        await wait_until(lambda: hub.readers == 1)
        unknown = await committed(pool, "availability.changed", range(1))
        # The hub has not read any event of the family yet: it cannot know what came before.
        assert not hub.publish_committed(start, unknown)
        hub.poke()
        await wait_until(lambda: got == unknown)
        other_writer = await committed(pool, "availability.changed", range(1, 3))  # e.g. a rebuild elsewhere
        mine = await committed(pool, "availability.changed", range(3, 5))
        # What came before is other_writer's, which the hub has not read: taking these would skip it.
        assert not hub.publish_committed(other_writer[-1].position, mine)
        stock = await committed(pool, "stock.changed", range(1))
        assert not hub.publish_committed(unknown[-1].position, stock)  # not the express family
        await asyncio.sleep(0.1)
        assert got == unknown
        hub.poke()
        await wait_until(lambda: len(got) >= 5)
        await asyncio.sleep(0.1)
        assert [e.id for e in got] == [e.id for e in unknown + other_writer + mine]
    finally:
        reader.cancel()
    try:
        await wait_until(lambda: hub.readers == 0)
        alone = await committed(pool, "availability.changed", range(5, 6))
        assert not hub.publish_committed(mine[-1].position, alone)  # nobody follows: the hub keeps no window
    finally:
        await hub.stop()


async def test_an_express_family_must_be_one_the_hub_reads(pool: asyncpg.Pool, database_url: str) -> None:
    with pytest.raises(ValueError, match="express family"):
        EventHub(pool, database_url, families=["stock"], express_family="availability")
