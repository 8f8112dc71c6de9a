"""Random operation sequences never break the invariant, and every level equals its movements."""

from __future__ import annotations

import asyncio

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.inventory import repository as repo
from services.inventory import use_cases
from services.inventory.schemas import MovementIn
from shared.db import transaction
from shared.errors import InsufficientStock, ValidationFailed

SKUS = ["TEE-M", "JEANS-32"]
PLACES = ["store-a", "store-b", "wh-1"]

movement = st.builds(
    lambda kind, sku, loc, to, qty: (kind, sku, loc, to, qty),
    st.sampled_from(["receipt", "adjustment", "count", "transfer", "reserve", "release"]),
    st.sampled_from(SKUS),
    st.sampled_from(PLACES),
    st.sampled_from(PLACES),
    st.integers(min_value=-30, max_value=30),
)


async def _run(pool: asyncpg.Pool, ops: list[tuple[str, str, str, str, int]]) -> None:
    for kind, sku, loc, to, qty in ops:
        try:
            async with transaction(pool) as conn:
                if kind in ("reserve", "release"):
                    # Reservations are the orders service's, through the same published SQL function.
                    delta = abs(qty) if kind == "reserve" else -abs(qty)
                    await repo.lock_levels(conn, [(sku, loc)])
                    await repo.apply_movement(conn, sku, loc, "reservation" if delta > 0 else "release", 0, delta)
                else:
                    body = MovementIn(sku=sku, location_id=loc, kind=kind, qty=qty,
                                      to_location_id=to if kind == "transfer" else None)
                    await use_cases.record_movement(conn, body, "test")
        except (InsufficientStock, ValidationFailed):
            pass
        except asyncpg.PostgresError as exc:
            assert repo.is_insufficient(exc), exc
        bad = await pool.fetchval(
            "SELECT count(*) FROM inventory.stock_levels WHERE reserved < 0 OR reserved > on_hand OR on_hand < 0"
        )
        assert bad == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(movement, min_size=1, max_size=25))
async def test_random_sequences_keep_levels_equal_to_their_movements(
    inventory: object, pool: asyncpg.Pool, ops: list[tuple[str, str, str, str, int]]
) -> None:
    async with pool.acquire() as conn:
        # Each example starts from empty stock: delete levels and movements behind the triggers' back.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("DELETE FROM inventory.stock_movements; DELETE FROM inventory.stock_levels")
        await conn.execute("SET session_replication_role = origin")
    await _run(pool, ops)
    assert await repo.level_sums_mismatch(pool) == []


async def test_concurrent_transfers_in_opposite_directions_do_not_deadlock(inventory: object,
                                                                          pool: asyncpg.Pool) -> None:
    async with transaction(pool) as conn:
        for loc in PLACES:
            await use_cases.record_movement(conn, MovementIn(sku="TEE-M", location_id=loc, kind="receipt", qty=500),
                                            "test")

    async def transfer(src: str, dst: str) -> None:
        async with transaction(pool) as conn:
            await use_cases.record_movement(
                conn, MovementIn(sku="TEE-M", location_id=src, kind="transfer", qty=1, to_location_id=dst), "test"
            )

    pairs = [(a, b) for a in PLACES for b in PLACES if a != b] * 15
    await asyncio.gather(*[transfer(a, b) for a, b in pairs])
    assert await pool.fetchval("SELECT sum(on_hand) FROM inventory.stock_levels WHERE sku = 'TEE-M'") == 1500
    assert await repo.level_sums_mismatch(pool) == []
