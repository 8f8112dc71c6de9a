"""A JSON body reaches the route whole however it is sent (in pieces, chunked, slowly), and one that is
too big or too slow is refused with nothing changed and its connection closed. Through a real socket."""

from __future__ import annotations

import uuid

import asyncpg
import orjson

from tests.conftest import Api, ServiceFactory, assert_problem
from tests.services.inventory.conftest import LOCATIONS, SKUS
from tests.wire import LAST_CHUNK, Wire, chunk, exchange, head

MOVEMENTS = "/v1/stock/movements"
JSON = {"Content-Type": "application/json"}
MIB = 1_048_576


def receipt(qty: int = 7, reason: str = "delivery") -> bytes:
    return orjson.dumps({"sku": "TEE-M", "location_id": "store-a", "kind": "receipt", "qty": qty, "reason": reason})


def keyed() -> dict[str, str]:
    return {**JSON, "Idempotency-Key": uuid.uuid4().hex}


async def on_hand(pool: asyncpg.Pool) -> int:
    return await pool.fetchval(
        "SELECT coalesce(sum(on_hand), 0) FROM inventory.stock_levels WHERE sku = 'TEE-M' AND location_id = 'store-a'")


async def movements(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM inventory.stock_movements")


async def test_a_body_sent_in_two_writes_is_read_whole(inventory: Api, pool: asyncpg.Pool) -> None:
    body = receipt(7, reason="x" * 200)
    answer = await exchange(inventory, "POST", MOVEMENTS, body, body[:9], body[9:], headers=keyed(), pause_s=0.3)
    assert answer.status == 201, answer.body
    assert await on_hand(pool) == 7


async def test_a_chunked_body_with_no_length_is_read_whole(inventory: Api, pool: asyncpg.Pool) -> None:
    body = receipt(5)
    wire = await Wire.open(inventory)
    try:
        await wire.send(head("POST", MOVEMENTS, inventory, keyed(), chunked=True),
                        chunk(body[:3]), chunk(body[3:20]), chunk(body[20:]) + LAST_CHUNK, pause_s=0.2)
        answer = await wire.answer()
    finally:
        wire.close()
    assert answer.status == 201, answer.body
    assert await on_hand(pool) == 5


async def test_a_body_trickled_a_few_bytes_at_a_time_is_read_whole(inventory: Api, pool: asyncpg.Pool) -> None:
    body = receipt(3)
    pieces = [body[i:i + 8] for i in range(0, len(body), 8)]
    answer = await exchange(inventory, "POST", MOVEMENTS, body, *pieces, headers=keyed(), pause_s=0.05)
    assert answer.status == 201, answer.body
    assert await on_hand(pool) == 3


async def test_an_over_limit_chunked_body_is_413_and_its_connection_closed(inventory: Api, pool: asyncpg.Pool) -> None:
    before = await movements(pool)
    wire = await Wire.open(inventory)
    try:
        await wire.send(head("POST", MOVEMENTS, inventory, keyed(), chunked=True))
        piece = chunk(b" " * 65536)
        await wire.send_while_open(*[piece] * (3 * MIB // 65536))  # 3 MiB, no length: counted as it comes
        answer = await wire.answer()
        assert answer.status == 413 and answer.headers.get("connection") == "close"
        assert_problem(answer.status, answer.json(), 413, "payload-too-large")
        await wire.send(LAST_CHUNK)  # the body ends: the connection is not kept for another request
        assert await wire.closed_by_server()
    finally:
        wire.close()
    assert await movements(pool) == before


async def test_a_declared_length_over_the_limit_is_413_before_any_body(inventory: Api, pool: asyncpg.Pool) -> None:
    wire = await Wire.open(inventory)
    try:
        await wire.send(head("POST", MOVEMENTS, inventory, keyed(), length=3 * MIB))  # and not a byte of it
        answer = await wire.answer()
    finally:
        wire.close()
    assert_problem(answer.status, answer.json(), 413, "payload-too-large")
    assert await movements(pool) == 0


async def test_bytes_past_a_small_content_length_are_never_part_of_the_body(inventory: Api, pool: asyncpg.Pool) -> None:
    """A Content-Length that understates what follows: the body is what it declares; the rest (over the
    limit) is no request, the connection ends, and nothing else is stored."""
    body = receipt(2)
    wire = await Wire.open(inventory)
    try:
        await wire.send(head("POST", MOVEMENTS, inventory, keyed(), length=len(body)) + body)
        first = await wire.answer()
        await wire.send_while_open(b"x" * (2 * MIB))
        assert await wire.closed_by_server()
    finally:
        wire.close()
    assert first.status == 201, first.body
    assert (await on_hand(pool), await movements(pool)) == (2, 1)


async def test_content_length_and_chunked_together_are_refused(inventory: Api, pool: asyncpg.Pool) -> None:
    body = receipt(4)
    wire = await Wire.open(inventory)
    try:
        request = head("POST", MOVEMENTS, inventory, {**keyed(), "Content-Length": str(len(body))}, chunked=True)
        await wire.send(request, chunk(body) + LAST_CHUNK)
        answer = await wire.answer()
    finally:
        wire.close()
    assert answer.status == 400
    assert await movements(pool) == 0


async def inventory_with(service: ServiceFactory, **overrides: float) -> Api:
    api = await service("inventory", **overrides)
    for location_id, spec in LOCATIONS.items():
        assert (await api.put(f"/v1/locations/{location_id}", json=spec))[0] == 201
    for sku, spec in SKUS.items():
        assert (await api.put(f"/v1/skus/{sku}", json=spec))[0] == 201
    return api


async def test_a_broken_chunk_is_a_client_error_not_a_500(service: ServiceFactory, pool: asyncpg.Pool) -> None:
    """aiohttp's parser drops a body whose chunk framing breaks without telling its reader, so the
    reader learns it from its clock: 408, not a hang and not a 500."""
    api = await inventory_with(service, body_timeout_s=0.5)
    body = receipt(4)
    wire = await Wire.open(api)
    try:
        await wire.send(head("POST", MOVEMENTS, api, keyed(), chunked=True), chunk(body[:10]),
                        b"zz\r\nnot hex\r\n", pause_s=0.2)
        answer = await wire.answer()
    finally:
        wire.close()
    assert 400 <= answer.status < 500, answer.body
    assert await movements(pool) == 0


async def test_a_body_that_stops_coming_is_408_and_its_connection_closed(service: ServiceFactory,
                                                                         pool: asyncpg.Pool) -> None:
    api = await inventory_with(service, body_timeout_s=0.5)
    body = receipt(9)
    wire = await Wire.open(api)
    try:
        await wire.send(head("POST", MOVEMENTS, api, keyed(), length=len(body)), body[:10])
        answer = await wire.answer()  # the rest never comes
        assert_problem(answer.status, answer.json(), 408, "request-timeout")
        assert answer.headers.get("connection") == "close"
        await wire.send_while_open(body[10:])  # too late: not taken as the body, nor as a request
        assert await wire.closed_by_server()
    finally:
        wire.close()
    assert await movements(pool) == 0
