"""The incremental projection always agrees with a from-scratch computation, and a crash mid-batch
neither skips nor double-applies anything."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cli import main
from services.ecommerce import projection
from services.ecommerce import repository as ecommerce_repo
from services.ecommerce import use_cases as ecommerce
from services.ecommerce.app import HUB_FAMILIES
from services.ecommerce.domain import Availability, Rule
from services.ecommerce.projection import EXPRESS_BATCHES
from services.ecommerce.schemas import Buffer, RuleIn
from services.inventory import repository as inventory_repo
from services.inventory import use_cases as inventory
from services.inventory.schemas import LocationIn, MovementIn
from shared.db import transaction
from shared.errors import InsufficientStock, NotFound, ValidationFailed
from shared.event_stream import EventHub
from shared.outbox import Event, read_after
from tests.conftest import Api, ServiceFactory
from tests.polling import eventually
from tests.services.ecommerce.conftest import LOCATIONS, SKUS, Channel

PLACES = sorted(LOCATIONS)

operation = st.one_of(
    st.tuples(st.sampled_from(["receipt", "adjustment", "count", "transfer", "reserve", "release"]),
              st.sampled_from(sorted(SKUS)), st.sampled_from(PLACES), st.sampled_from(PLACES),
              st.integers(min_value=-20, max_value=20)),
    st.tuples(st.just("safety"), st.sampled_from(sorted(SKUS)), st.sampled_from(PLACES), st.just(""),
              st.integers(min_value=0, max_value=5)),
    st.tuples(st.just("ship"), st.just(""), st.sampled_from(PLACES), st.just(""), st.integers(0, 1)),
    st.tuples(st.just("rule"), st.sampled_from(["*", *sorted(SKUS)]), st.sampled_from(["absolute", "percent", "none"]),
              st.just(""), st.integers(min_value=0, max_value=60)),
    st.tuples(st.just("settle"), st.just(""), st.just(""), st.just(""), st.just(0)),
)


async def apply(pool: asyncpg.Pool, op: tuple[str, str, str, str, int]) -> None:
    kind, sku, place, to, qty = op
    try:
        if kind == "safety":
            await inventory.set_safety_stock(pool, sku, place, qty)
        elif kind == "ship":
            await inventory.put_location(pool, place, LocationIn(**{**LOCATIONS[place], "ship": bool(qty)}))
        elif kind == "rule":
            await _rule(pool, sku, place, qty)
        elif kind == "settle":
            await projection.catch_up(pool)
        elif kind in ("reserve", "release"):
            async with transaction(pool) as conn:
                delta = abs(qty) if kind == "reserve" else -abs(qty)
                await inventory_repo.lock_levels(conn, [(sku, place)])
                await inventory_repo.apply_movement(conn, sku, place, "reservation" if delta > 0 else "release",
                                                    0, delta)
        else:
            async with transaction(pool) as conn:
                body = MovementIn(sku=sku, location_id=place, kind=kind, qty=qty,
                                  to_location_id=to if kind == "transfer" else None)
                await inventory.record_movement(conn, body, "test")
    except (InsufficientStock, ValidationFailed, NotFound):
        pass
    except asyncpg.PostgresError as exc:
        assert inventory_repo.is_insufficient(exc), exc


async def _rule(pool: asyncpg.Pool, scope: str, kind: str, value: int) -> None:
    sku = None if scope == "*" else scope
    if kind == "none":
        if sku is not None:
            await ecommerce.delete_rule(pool, sku)
        return
    amount = Decimal(min(value, 100)) if kind == "percent" else Decimal(value // 10)
    await ecommerce.put_rule(pool, sku, RuleIn(buffer=Buffer(kind=kind, value=amount),  # type: ignore[arg-type]
                                               low_stock_threshold=value % 7))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=20))
async def test_projection_equals_a_from_scratch_computation_after_random_operations(
    channel: Channel, ops: list[tuple[str, str, str, str, int]]
) -> None:
    # The service's own projector runs concurrently with the explicit catch-ups: both must be safe.
    for op in ops:
        await apply(channel.pool, op)
    await channel.settled()
    drift = await projection.check(channel.pool)
    assert drift.none, drift
    assert (await projection.rebuild(channel.pool)).none


@pytest.fixture
async def quiet(service: ServiceFactory, pool: asyncpg.Pool) -> Api:
    """Inventory only: no e-commerce process, so no background projector races the test."""
    api = await service("inventory")
    for location_id, body in LOCATIONS.items():
        await api.put(f"/v1/locations/{location_id}", json=body)
    for sku, body in SKUS.items():
        await api.put(f"/v1/skus/{sku}", json=body)
    return api


async def _receive(api: Api, key: str, sku: str, location_id: str, qty: int) -> None:
    status, body, _ = await api.post("/v1/stock/movements", idem=key,
                                     json={"sku": sku, "location_id": location_id, "kind": "receipt", "qty": qty})
    assert status == 201, body


async def test_a_batch_that_fails_midway_moves_neither_cursor_nor_projection(
    quiet: Api, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    before = await ecommerce_repo.cursor_of(pool, projection.CURSOR)

    async def crash(*args: Any) -> None:
        raise ConnectionResetError("process died")

    monkeypatch.setattr(ecommerce_repo, "save_batch", crash)
    with pytest.raises(ConnectionResetError):
        await projection.apply_batch(pool)
    assert await ecommerce_repo.cursor_of(pool, projection.CURSOR) == before
    assert await pool.fetchval("SELECT count(*) FROM ecommerce.levels") == 0
    assert await pool.fetchval("SELECT count(*) FROM core.events WHERE topic LIKE 'availability.%'") == 0
    monkeypatch.undo()

    await projection.catch_up(pool)
    await projection.catch_up(pool)  # nothing left: applying again changes nothing
    assert (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].sellable == 4
    assert await pool.fetchval("SELECT count(*) FROM core.events WHERE topic = 'availability.changed'") == 1
    assert await ecommerce_repo.cursor_of(pool, projection.CURSOR) > before


async def test_a_fresh_projection_is_rebuilt_once_not_replayed_from_the_start(quiet: Api, pool: asyncpg.Pool) -> None:
    for n in range(5):
        await _receive(quiet, f"r{n}", "TEE-M", PLACES[n % len(PLACES)], 2)
    assert await ecommerce_repo.cursor_of(pool, projection.CURSOR) == (0, 0)
    assert not (await projection.rebuild(pool)).none  # it had everything to do
    # The cursor moved to the last event the rebuild's snapshot reflected (the last receipt's; the
    # rebuild's own availability events come after it): nothing left to replay.
    last_receipt = await pool.fetchrow("SELECT txid, id FROM core.events WHERE topic = 'stock.changed'"
                                       " ORDER BY txid DESC, id DESC LIMIT 1")
    assert await ecommerce_repo.cursor_of(pool, projection.CURSOR) == tuple(last_receipt)
    assert await projection.catch_up(pool) == 0
    await _receive(quiet, "r-after", "TEE-M", "wh-1", 1)  # later events still apply as usual
    assert await projection.catch_up(pool) == 1
    assert (await projection.check(pool)).none
    shipping = (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].ship_available
    assert shipping == 2 + 2 + 1  # store-b and wh-1 ship


async def test_rebuild_cli_repairs_a_projection_changed_behind_its_back(
    quiet: Api, pool: asyncpg.Pool, database_env: dict[str, str]
) -> None:
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    await _receive(quiet, "r2", "JEANS-32", "store-b", 2)
    await projection.catch_up(pool)
    await pool.execute("UPDATE ecommerce.availability SET sellable = 1, ship_available = 1 WHERE sku = 'TEE-M'")
    await pool.execute("DELETE FROM ecommerce.levels WHERE sku = 'JEANS-32'")
    env = {**database_env, "OMNISTOCK_LOG_LEVEL": "warning"}

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, ["ecommerce", "rebuild", *args], env=env)

    checked = await asyncio.to_thread(invoke, "--check")
    assert checked.exit_code == 1, checked.output
    assert "in 1 SKUs, 1 levels" in checked.output and "TEE-M" in checked.output
    rebuilt = await asyncio.to_thread(invoke)
    assert rebuilt.exit_code == 0, rebuilt.output
    again = await asyncio.to_thread(invoke, "--check")
    assert again.exit_code == 0, again.output
    assert "in 0 SKUs, 0 levels, 0 locations" in again.output
    assert (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].sellable == 4


async def test_recompute_inputs_count_shipping_locations_only_and_carry_each_rule(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO ecommerce.locations (location_id, name, kind, ship, pickup, lat, lon) VALUES"
        " ('wh', 'Warehouse', 'warehouse', true, false, 0, 0), ('st', 'Store', 'store', false, true, 0, 0)")
    await pool.execute(
        "INSERT INTO ecommerce.levels (sku, location_id, available) VALUES"
        " ('A', 'wh', 5), ('A', 'st', 7), ('B', 'st', 3)")
    await pool.execute("INSERT INTO ecommerce.availability (sku, ship_available, sellable, state)"
                       " VALUES ('A', 4, 4, 'in_stock')")
    async with pool.acquire() as conn:
        default, inputs = await ecommerce_repo.recompute_inputs(conn, ["A", "B", "NONE"], sum_levels=True)
        assert default is None
        assert {sku: i.ship_available for sku, i in inputs.items()} == {"A": 5, "B": 0, "NONE": 0}
        assert inputs["A"].stored == Availability(4, 4, "in_stock") and inputs["B"].stored is None
        assert all(i.own_rule is None for i in inputs.values())
        await conn.execute("INSERT INTO ecommerce.channel_rules (scope, buffer_kind, buffer_value) VALUES"
                           " ('*', 'absolute', 2), ('B', NULL, NULL)")
        await conn.execute("UPDATE ecommerce.channel_rules SET low_stock_threshold = 9 WHERE scope = 'B'")
        default, inputs = await ecommerce_repo.recompute_inputs(conn, ["A", "B"], sum_levels=False)
        assert default == Rule("absolute", Decimal("2.00"), None)
        assert inputs["A"].own_rule is None and inputs["B"].own_rule == Rule(None, None, 9)
        assert inputs["A"].ship_available is None and inputs["A"].stored == Availability(4, 4, "in_stock")


async def test_stock_changes_write_only_the_levels_that_moved_and_locations_only_when_they_change(
    quiet: Api, pool: asyncpg.Pool
) -> None:
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    await _receive(quiet, "r2", "JEANS-32", "wh-1", 2)
    await projection.catch_up(pool)

    async def versions() -> dict[str, int]:
        rows = await pool.fetch("SELECT 'level ' || sku AS name, xmin::text::bigint AS v FROM ecommerce.levels"
                                " UNION ALL SELECT 'location ' || location_id, xmin::text::bigint"
                                " FROM ecommerce.locations")
        return {r["name"]: r["v"] for r in rows}

    before = await versions()
    await _receive(quiet, "r3", "TEE-M", "wh-1", 1)
    await projection.catch_up(pool)
    after = await versions()
    assert {name for name in before if after[name] != before[name]} == {"level TEE-M"}

    status, _, _ = await quiet.put("/v1/locations/wh-1", json={**LOCATIONS["wh-1"], "name": "Renamed"})
    assert status in (200, 201)
    await projection.catch_up(pool)
    assert await pool.fetchval("SELECT name FROM ecommerce.locations WHERE location_id = 'wh-1'") == "Renamed"
    assert (await projection.check(pool)).none


async def test_a_batch_computed_before_another_process_moved_the_cursor_writes_nothing(
    quiet: Api, pool: asyncpg.Pool
) -> None:
    """Replicas race for each batch without a lock: the loser's write finds the cursor's version moved
    (by the winner's batch, or by a rebuild) and changes nothing."""
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    stale = await ecommerce_repo.read_cursor(pool, projection.CURSOR)
    await projection.catch_up(pool)  # the winner
    wrong = ecommerce_repo.Batch(levels=[("TEE-M", "wh-1", 99)], new_locations=[],
                                 changed=[("TEE-M", Availability(99, 99, "in_stock"))],
                                 events=[("availability.changed", "TEE-M", {"sku": "TEE-M"})])
    events_before = await pool.fetchval("SELECT count(*) FROM core.events")
    assert await ecommerce_repo.save_batch(pool, projection.CURSOR, stale, (2**62, 1), wrong) is None
    current = await ecommerce_repo.read_cursor(pool, projection.CURSOR)
    await projection.rebuild(pool)  # nothing to repair; the cursor's version moves all the same
    assert (await ecommerce_repo.read_cursor(pool, projection.CURSOR)).version > current.version
    assert await ecommerce_repo.save_batch(pool, projection.CURSOR, current, (2**62, 1), wrong) is None
    assert (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].sellable == 4
    assert await pool.fetchval("SELECT available FROM ecommerce.levels WHERE sku = 'TEE-M'") == 4
    assert await pool.fetchval("SELECT count(*) FROM core.events") == events_before
    assert (await projection.check(pool)).none


async def test_a_known_cursor_saves_a_read_and_is_dropped_once_another_write_moves_it(
    quiet: Api, pool: asyncpg.Pool
) -> None:
    """The leader keeps the cursor its last batch wrote instead of reading it each batch; a rebuild (or
    another replica) moving it in between makes the next batch refused, and the one after reads afresh."""
    known = projection.KnownCursor()
    await projection.catch_up(pool)
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    assert await projection.apply_batch(pool, known=known) == 1
    assert known.state == await ecommerce_repo.read_cursor(pool, projection.CURSOR)

    await projection.rebuild(pool)  # moves the version behind the leader's back
    await _receive(quiet, "r2", "TEE-M", "wh-1", 3)
    assert await projection.apply_batch(pool, known=known) is None  # refused: written nothing
    assert known.state is None
    assert (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].sellable == 4
    assert await projection.apply_batch(pool, known=known) == 1  # read afresh, then applied
    assert (await ecommerce_repo.availability_of(pool, ["TEE-M"]))["TEE-M"].sellable == 7
    assert (await projection.check(pool)).none


async def test_a_writer_whose_transaction_began_before_the_last_publication_is_refused(
    quiet: Api, pool: asyncpg.Pool
) -> None:
    """Streams take the projector's events at its commit, before older transactions end: a writer whose
    transaction id is below the last publisher's (it drew it, then waited for the cursor's lock) would
    publish events that sort before ones already streamed, so its write is refused even though the
    cursor's version is the one it read."""
    await projection.catch_up(pool)
    await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
    early = await pool.acquire()
    try:
        transaction_ = early.transaction()
        await transaction_.start()
        await early.fetchval("SELECT pg_current_xact_id()")  # its id is drawn now, before the batch below
        assert await projection.apply_batch(pool) == 1  # publishes availability.changed in a later transaction
        current = await ecommerce_repo.read_cursor(pool, projection.CURSOR)
        assert current.published == await pool.fetchrow(
            "SELECT txid, id FROM core.events WHERE topic LIKE 'availability.%' ORDER BY txid DESC, id DESC LIMIT 1")
        late = ecommerce_repo.Batch(levels=[], new_locations=[], changed=[("TEE-M", Availability(9, 9, "in_stock"))],
                                    events=[("availability.changed", "TEE-M", {"sku": "TEE-M", "sellable": 9})])
        events_before = await pool.fetchval("SELECT count(*) FROM core.events")
        assert await ecommerce_repo.save_batch(early, projection.CURSOR, current, current.position, late) is None
        await transaction_.commit()
    finally:
        await pool.release(early)
    assert await pool.fetchval("SELECT count(*) FROM core.events") == events_before
    assert await ecommerce_repo.read_cursor(pool, projection.CURSOR) == current
    # The same write from a transaction begun now goes through and names its last event.
    saved = await ecommerce_repo.save_batch(pool, projection.CURSOR, current, current.position, late)
    assert saved is not None and [e.topic for e in saved.events] == ["availability.changed"]
    assert (await ecommerce_repo.read_cursor(pool, projection.CURSOR)).published == saved.events[-1].position


async def test_the_projectors_events_reach_its_streams_at_commit_while_older_transactions_run(
    quiet: Api, pool: asyncpg.Pool, database_url: str
) -> None:
    """The outbox shows nothing committed after a transaction still running; the projector's process
    streams its availability events at its commit all the same (the hub's express lane), once, in order."""
    await projection.catch_up(pool)
    hub = EventHub(pool, database_url, poll_interval_s=0.01, families=HUB_FAMILIES,
                   express_family=projection.PUBLISHED_FAMILY)
    await hub.start()
    start, got = hub.head, list[Event]()

    async def follow() -> None:
        async for batch in hub.follow_batches(start, ["availability"], heartbeat_s=0.05):
            got.extend(batch)

    async def applied() -> bool:
        return await projection.apply_batch(pool, hub=hub) == 1  # 0 until the hub has read the change

    def sellable() -> list[int]:
        return [e.payload["available"] for e in got if e.topic == "availability.changed"]

    reader = asyncio.create_task(follow())
    older = await asyncpg.connect(database_url)
    taken_before = EXPRESS_BATCHES.labels("taken")._value.get()
    try:
        await eventually(lambda: _true(hub.readers == 1))
        await _receive(quiet, "r1", "TEE-M", "wh-1", 4)
        await eventually(applied)
        await eventually(lambda: _true(sellable() == [4]))  # from the outbox: the hub now holds the last one
        first = got[-1]
        await _receive(quiet, "r2", "TEE-M", "wh-1", 3)
        older_tx = older.transaction()
        await older_tx.start()
        await older.fetchval("SELECT pg_current_xact_id()")
        await eventually(applied)
        await eventually(lambda: _true(sellable() == [4, 7]))
        assert await read_after(pool, first.position, 10, ["availability"]) == []  # the outbox shows nothing yet
        assert EXPRESS_BATCHES.labels("taken")._value.get() == taken_before + 1
        await older_tx.rollback()
        await _receive(quiet, "r3", "TEE-M", "wh-1", 1)
        await eventually(applied)
        await eventually(lambda: _true(len(sellable()) >= 3))
        await asyncio.sleep(0.1)  # a duplicate would arrive about now
        assert sellable() == [4, 7, 8]
        assert [e.id for e in got] == [e.id for e in await read_after(pool, start, 100, ["availability"])]
    finally:
        reader.cancel()
        await older.close()
        await hub.stop()


async def _true(value: bool) -> bool:
    return value
