"""Finding a SKU by a code prefix or a piece of its name: what a store associate types on a phone."""

from __future__ import annotations

import pytest

from tests.conftest import Api, assert_problem

pytestmark = pytest.mark.asyncio


async def skus_found(inventory: Api, **params: str | int) -> list[str]:
    status, body, _ = await inventory.get("/v1/skus", params=params)
    assert status == 200, body
    return [s["sku"] for s in body["items"]]


async def test_a_bad_search_is_a_422_naming_q(inventory: Api) -> None:
    for q in ("x" * 101, "jea\u0000ns", "a\u202eb", ""):
        status, body, _ = await inventory.get("/v1/skus", params={"q": q})
        assert_problem(status, body, 422, field="q")


async def test_search_matches_a_code_prefix_or_a_piece_of_the_name_in_any_case(inventory: Api) -> None:
    assert await skus_found(inventory, q="jeans") == ["JEANS-32"]  # code prefix and name, once
    assert await skus_found(inventory, q="TEE") == ["TEE-M"]
    assert await skus_found(inventory, q="ee m") == ["TEE-M"]  # inside the name "Tee M"
    assert await skus_found(inventory, q="EANS-3") == []  # inside a code is not a code prefix
    assert await skus_found(inventory, q="coat") == []


async def test_wildcards_typed_in_a_search_are_plain_characters(inventory: Api) -> None:
    status, _, _ = await inventory.put("/v1/skus/CUP_100", json={"name": "Cup 100% cotton", "price": "5.00",
                                                                  "currency": "EUR"})
    assert status == 201
    assert await skus_found(inventory, q="%") == ["CUP_100"]
    assert await skus_found(inventory, q="cup_") == ["CUP_100"]
    assert await skus_found(inventory, q="C_P") == []


async def test_search_results_page_on_the_cursor(inventory: Api) -> None:
    for n in range(3):
        status, _, _ = await inventory.put(f"/v1/skus/SOCK-{n}", json={"name": f"Sock {n}", "price": "3.00",
                                                                       "currency": "EUR"})
        assert status == 201
    status, page, _ = await inventory.get("/v1/skus", params={"q": "sock", "limit": 2})
    assert [s["sku"] for s in page["items"]] == ["SOCK-0", "SOCK-1"] and page["next_cursor"]
    status, page, _ = await inventory.get("/v1/skus", params={"q": "sock", "limit": 2,
                                                              "cursor": page["next_cursor"]})
    assert [s["sku"] for s in page["items"]] == ["SOCK-2"] and page["next_cursor"] is None
