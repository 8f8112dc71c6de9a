"""The ledger HTTP service: every role against every endpoint, appends, bad input, denial logs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from ledger import identity, merkle
from ledger.cosign import Cosigner
from ledger.identity import TrustStore, msp_dir
from ledger.service.use_cases import open_ledger
from ledger.signing import sign_submission
from ledger.verify import verify_bundle
from shared.settings import Settings
from tests.conftest import Api, assert_problem
from tests.ledger.conftest import sale, summary

ROLES = ("admin", "ops", "store", "shop", "finance", "auditor")
SALE_SEQ, SUMMARY_SEQ = 0, 2


def signed(entries: list[dict[str, Any]], settings: Settings, org: str = "finance") -> dict[str, Any]:
    """The body finance's tools send: the entries and finance's own signature over them."""
    member = identity.load_identity(settings.data_dir, org)
    return {"entries": entries, "submission": sign_submission(member, entries).as_json()}


@pytest.fixture
async def ledger_api(service: Callable[[str], Awaitable[Api]], make_key: Callable[..., Awaitable[str]],
                     pool: Any, settings: Settings) -> tuple[Api, dict[str, Api]]:
    identity.init_identities(settings.data_dir)  # `omnistock ledger init`, before the service starts
    api = await service("ledger")
    await pool.execute("INSERT INTO inventory.locations (id, name, kind, lat, lon, ship, pickup)"
                       " VALUES ('s1', 'Store 1', 'store', 52.0, 4.0, true, true)")
    keys = {role: await make_key(role, "s1" if role == "store" else None) for role in ROLES}
    as_role = {role: api.as_key(key) for role, key in keys.items()}
    status, body, _ = await as_role["finance"].post("/v1/ledger/entries", idem="seed",
                                                    json=signed([sale(0), sale(1), summary()], settings))
    assert status == 201, body
    assert (await as_role["finance"].get("/v1/ledger/checkpoint"))[0] == 200  # cut on read
    await cosign_as_finance(settings)
    return api, as_role


async def cosign_as_finance(settings: Settings) -> None:
    """What the finance service does every few seconds, in finance's process (its own port, its own key)."""
    async with open_ledger(settings, max_size=1, service="finance") as port:
        trust = identity.TrustCache(identity.msp_dir(settings.data_dir))
        await Cosigner(port, identity.load_identity(settings.data_dir, "finance"), trust).cosign_latest()


def expected(role: str, readers: tuple[str, ...]) -> int:
    return 200 if role in readers else 403


LOG_READERS = ("admin", "ops", "finance", "auditor")
ALL_READERS = ("finance", "auditor")
ENDPOINTS: list[tuple[str, dict[str, Any] | None, tuple[str, ...]]] = [
    ("/v1/ledger/checkpoint", None, LOG_READERS),
    (f"/v1/ledger/entries/{SUMMARY_SEQ}", None, LOG_READERS),  # ops reads summaries
    (f"/v1/ledger/entries/{SALE_SEQ}", None, ALL_READERS),  # ... but not individual sales
    ("/v1/ledger/consistency", {"first": 1, "second": 3}, LOG_READERS),
    ("/v1/ledger/identities", None, LOG_READERS),
    ("/v1/ledger/export", {"from": 0, "to": 2}, ALL_READERS),
    ("/v1/ledger/audit", None, ALL_READERS),
    ("/v1/ledger/revenue", {"from": "2024-05-01", "to": "2024-05-31"}, ALL_READERS),
]


@pytest.mark.parametrize("role", ROLES)
async def test_every_role_against_every_read_endpoint(ledger_api: tuple[Api, dict[str, Api]], role: str) -> None:
    _, as_role = ledger_api
    for path, params, readers in ENDPOINTS:
        with capture_logs() as logs:
            status, body, _ = await as_role[role].get(path, params=params)
        if role in readers:
            assert status == 200, (path, body)
        else:
            assert_problem(status, body, 403, "forbidden")
            denial = [e for e in logs if e["event"] == "ledger access denied"]
            assert len(denial) == 1 and denial[0]["principal"].startswith(f"{role}:"), (path, logs)


@pytest.mark.parametrize("role", ROLES)
async def test_every_role_against_the_append_endpoint(ledger_api: tuple[Api, dict[str, Api]], role: str,
                                                     settings: Settings) -> None:
    _, as_role = ledger_api
    for n, entry in enumerate((sale(10), summary())):
        with capture_logs() as logs:  # a valid finance signature, sent with each role's key
            status, body, _ = await as_role[role].post("/v1/ledger/entries", idem=f"{role}-{n}",
                                                       json=signed([entry], settings))
        if role == "finance":
            assert status == 201, body
            assert body["receipts"][0]["seq"] >= 3
        else:
            assert_problem(status, body, 403, "forbidden")
            assert any(e["event"] == "ledger access denied" for e in logs)


async def test_no_key_is_401(ledger_api: tuple[Api, dict[str, Api]]) -> None:
    api, _ = ledger_api
    status, body, _ = await api.as_key(None).get("/v1/ledger/checkpoint")
    assert_problem(status, body, 401)


async def test_an_entry_read_over_http_proves_against_the_signed_checkpoint(
        ledger_api: tuple[Api, dict[str, Api]]) -> None:
    _, as_role = ledger_api
    status, body, _ = await as_role["auditor"].get("/v1/ledger/entries/1")
    assert status == 200
    assert set(body) == {"seq", "entry", "leaf_hash", "inclusion_proof", "checkpoint"}
    assert set(body["checkpoint"]) == {"tree_size", "root_hash", "timestamp", "signatures"}
    cp = body["checkpoint"]
    assert merkle.verify_inclusion(bytes.fromhex(body["leaf_hash"]), 1, cp["tree_size"],
                                   [bytes.fromhex(h) for h in body["inclusion_proof"]], bytes.fromhex(cp["root_hash"]))
    status, latest, _ = await as_role["ops"].get("/v1/ledger/checkpoint")
    assert status == 200
    assert (latest.pop("required_signers"), latest.pop("missing_signers")) == (["ledger", "finance"], [])
    assert latest == cp and [s["org"] for s in cp["signatures"]] == ["ledger", "finance"]


async def test_an_http_export_verifies_offline(ledger_api: tuple[Api, dict[str, Api]], settings: Settings) -> None:
    _, as_role = ledger_api
    status, bundle, _ = await as_role["auditor"].get("/v1/ledger/export", params={"from": 1, "to": 2})
    assert status == 200
    report = verify_bundle(bundle, TrustStore.from_dir(msp_dir(settings.data_dir)))
    assert report.ok, report.summary()


async def test_the_same_idempotency_key_appends_once(ledger_api: tuple[Api, dict[str, Api]],
                                                     settings: Settings) -> None:
    _, as_role = ledger_api
    body = signed([sale(5)], settings)
    first = await as_role["finance"].post("/v1/ledger/entries", idem="k1", json=body)
    again = await as_role["finance"].post("/v1/ledger/entries", idem="k1", json=body)
    assert first[0] == 201 and again[0] == 201 and first[1] == again[1]
    assert again[2].headers["Idempotent-Replayed"] == "true"
    status, body, _ = await as_role["finance"].post("/v1/ledger/entries", idem="k1", json=signed([sale(6)], settings))
    assert_problem(status, body, 409)


@pytest.mark.parametrize("entries, field", [
    ([], "entries"),
    ([{"kind": "gossip", "business_day": "2024-05-01"}], "entries.0"),
    ([{**sale(1), "sales_total": 10.5}], "entries.0.reconciled_sale.sales_total"),
    ([{**sale(1), "business_day": "2024-02-30"}], "entries.0.reconciled_sale.business_day"),
    ([{**sale(1), "note": 1.5}], "entries"),  # a float has no canonical encoding
])
async def test_bad_entries_are_422_and_append_nothing(ledger_api: tuple[Api, dict[str, Api]],
                                                      entries: list[Any], field: str) -> None:
    _, as_role = ledger_api
    junk = {"org": "finance", "cert_pem": "-", "timestamp": "-", "signature": "-"}  # entries are checked first
    status, body, _ = await as_role["finance"].post("/v1/ledger/entries", idem="bad",
                                                    json={"entries": entries, "submission": junk})
    assert_problem(status, body, 422)
    assert any(e["field"].startswith(field) for e in body["errors"]), body
    status, cp, _ = await as_role["finance"].get("/v1/ledger/entries/3")
    assert status == 404


async def test_bad_queries_are_4xx(ledger_api: tuple[Api, dict[str, Api]]) -> None:
    _, as_role = ledger_api
    finance = as_role["finance"]
    assert (await finance.get("/v1/ledger/entries/99"))[0] == 404
    assert (await finance.get("/v1/ledger/entries/-1"))[0] == 422
    assert (await finance.get("/v1/ledger/consistency", params={"first": 2, "second": 1}))[0] == 422
    assert (await finance.get("/v1/ledger/consistency", params={"first": 1, "second": 99}))[0] == 422
    assert (await finance.get("/v1/ledger/export", params={"from": 0, "to": 99}))[0] == 422
    assert (await finance.get("/v1/ledger/export", params={"from": 0}))[0] == 422
    assert (await finance.get("/v1/ledger/revenue", params={"from": "2024-05-02", "to": "2024-05-01"}))[0] == 422


async def test_revenue_sums_verified_reconciled_sales(ledger_api: tuple[Api, dict[str, Api]],
                                                      settings: Settings) -> None:
    _, as_role = ledger_api
    await as_role["finance"].post("/v1/ledger/entries", idem="more", json=signed([
        sale(7, location_id="s1", channel="store", amount="2.50"), sale(8, location_id="s1", channel="store",
                                                                        amount="-1.25"),
        sale(9, day="2024-06-01")], settings))
    status, body, _ = await as_role["auditor"].get("/v1/ledger/revenue", params={"from": "2024-05-01",
                                                                                  "to": "2024-05-31"})
    assert status == 200 and body["verified"]
    # These entries were appended directly, with no sales behind them in finance: every group differs.
    assert [(d["channel"], d["location_id"]) for d in body["comparison"]] == [("online", None), ("store", "s1")]
    assert body["groups"] == [
        {"business_day": "2024-05-01", "channel": "online", "location_id": None, "currency": "EUR", "sales": 2,
         "amount": "20.00"},
        {"business_day": "2024-05-01", "channel": "store", "location_id": "s1", "currency": "EUR", "sales": 2,
         "amount": "1.25"},
    ]


async def test_openapi_lists_the_ledger_routes(ledger_api: tuple[Api, dict[str, Api]]) -> None:
    api, _ = ledger_api
    status, doc, _ = await api.get("/openapi.json")
    assert status == 200
    for path in ("/v1/ledger/checkpoint", "/v1/ledger/entries/{seq}", "/v1/ledger/consistency",
                 "/v1/ledger/identities", "/v1/ledger/export", "/v1/ledger/entries"):
        assert path in doc["paths"]


async def test_find_by_entry_key_or_order_id_refuses_bad_queries_and_roles(ledger_api, settings) -> None:
    api, as_role = ledger_api
    keyed = [{**sale(40), "entry_key": "sale:ord-40:2024-05-01"}, {**sale(41), "entry_key": "sale:ord-41:2024-05-01"},
             {**summary(), "entry_key": "run:9"}]
    status, body, _ = await as_role["finance"].post("/v1/ledger/entries", idem="keyed", json=signed(keyed, settings))
    assert status == 201, body
    for params, field in [({}, None), ({"entry_key": "x", "order_id": "y"}, None), ({"order_id": "a:b"}, "order_id"),
                          ({"entry_key": ""}, "entry_key"), ({"nonsense": "1"}, None)]:
        status, body, _ = await as_role["auditor"].get("/v1/ledger/entries", params=params)
        assert_problem(status, body, 422, field=field)
    for role in ("store", "shop"):
        status, body, _ = await as_role[role].get("/v1/ledger/entries", params={"order_id": "ord-40"})
        assert_problem(status, body, 403)
    _, by_order, _ = await as_role["auditor"].get("/v1/ledger/entries", params={"order_id": "ord-40"})
    assert [i["kind"] for i in by_order["items"]] == ["reconciled_sale"]
    _, by_key, _ = await as_role["auditor"].get("/v1/ledger/entries", params={"entry_key": "run:9"})
    assert [i["kind"] for i in by_key["items"]] == ["reconciliation_summary"]
    # ops reads summaries only: an order's sale is not even named to it
    _, hidden, _ = await as_role["ops"].get("/v1/ledger/entries", params={"order_id": "ord-40"})
    assert hidden["items"] == []
    seq = by_order["items"][0]["seq"]
    status, entry, _ = await as_role["auditor"].get(f"/v1/ledger/entries/{seq}")
    assert status == 200 and entry["entry"]["order_id"] == sale(40)["order_id"]
