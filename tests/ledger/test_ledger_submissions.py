"""Each organisation signs where it runs: the ledger service holds no member key but its own, so an
append is refused unless its submitter signed exactly these entries with a trusted member key of an
organisation the policy allows. Every refusal writes nothing (the tree does not grow)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cryptography import x509

from ledger import identity, signing
from ledger.encoding import format_timestamp
from ledger.identity import Identity
from shared.settings import Settings
from tests.conftest import Api, assert_problem
from tests.ledger.conftest import sale

MILLION = "1000000.00"


@pytest.fixture
async def finance_api(service: Callable[..., Awaitable[Api]], make_key: Callable[..., Awaitable[str]],
                      settings: Settings) -> Api:
    identity.init_identities(settings.data_dir)
    return (await service("ledger")).as_key(await make_key("finance"))


def member(settings: Settings, org: str) -> Identity:
    return identity.load_identity(settings.data_dir, org)


def body(entries: list[dict[str, Any]], submission: signing.Submission) -> dict[str, Any]:
    return {"entries": entries, "submission": submission.as_json()}


async def stored(pool: asyncpg.Pool) -> tuple[int, int]:
    return (await pool.fetchval("SELECT count(*) FROM ledger.entries"),
            await pool.fetchval("SELECT count(*) FROM ledger.batches"))


async def refused(api: Api, pool: asyncpg.Pool, payload: dict[str, Any], status: int, code: str) -> dict[str, Any]:
    before = await stored(pool)
    got, problem, _ = await api.post("/v1/ledger/entries", idem=f"try-{code}", json=payload)
    assert_problem(got, problem, status, code)
    assert await stored(pool) == before  # nothing written
    return problem


def certificate_from(issuer_cert: x509.Certificate, issuer_key: Any, org: str, not_before: datetime,
                     not_after: datetime) -> Identity:
    key = identity.new_private_key()
    cert = identity.issue_member_cert(issuer_cert, issuer_key, key.public_key(), org, "client", not_before, not_after)
    return Identity(org, "client", cert, key)


def offline_ca(settings: Settings, org: str) -> tuple[x509.Certificate, Any]:
    cert = x509.load_pem_x509_certificate((identity.msp_dir(settings.data_dir) / org / "ca.pem").read_bytes())
    key = identity._load_key(identity.offline_ca_dir(settings.data_dir) / org / "ca.key")
    return cert, key


async def test_the_old_attack_a_finance_api_key_alone_cannot_put_a_million_on_the_ledger(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings) -> None:
    forged = [sale(1, amount=MILLION)]
    await refused(finance_api, pool, {"entries": forged}, 422, "unsigned-batch")
    # Nor with a key the ledger service does hold: its own signs checkpoints, never sales.
    await refused(finance_api, pool, body(forged, signing.sign_submission(member(settings, "ledger"), forged)),
                  403, "signer-not-allowed")
    # Nor by altering a batch finance did sign.
    honest = [sale(1, amount="10.00")]
    await refused(finance_api, pool, body(forged, signing.sign_submission(member(settings, "finance"), honest)),
                  422, "bad-signature")


async def test_a_signature_over_other_entries_or_garbage_is_refused(finance_api: Api, pool: asyncpg.Pool,
                                                                     settings: Settings) -> None:
    finance = member(settings, "finance")
    signed = signing.sign_submission(finance, [sale(1), sale(2)])
    await refused(finance_api, pool, body([sale(2), sale(1)], signed), 422, "bad-signature")  # reordered
    await refused(finance_api, pool, body([sale(1)], signed), 422, "bad-signature")  # one left out
    await refused(finance_api, pool, body([sale(1), sale(2), sale(3)], signed), 422, "bad-signature")
    other = signing.sign_submission(finance, [sale(1), sale(2)])
    swapped = signing.Submission(signed.org, signed.cert_pem, signed.timestamp, other.signature)  # another time
    await refused(finance_api, pool, body([sale(1), sale(2)], swapped), 422, "bad-signature")
    junk = signing.Submission(signed.org, signed.cert_pem, signed.timestamp, "not base64!")
    await refused(finance_api, pool, body([sale(1), sale(2)], junk), 422, "bad-signature")
    not_pem = signing.Submission(signed.org, "-----BEGIN CERTIFICATE-----\nAAAA\n", signed.timestamp, signed.signature)
    await refused(finance_api, pool, body([sale(1), sale(2)], not_pem), 422, "untrusted-signer")


async def test_untrusted_expired_revoked_and_misnamed_certificates_are_refused(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings, tmp_path: Any) -> None:
    entries = [sale(1)]
    # A CA of one's own, issuing an O=finance member: not the finance CA the ledger trusts.
    identity.init_identities(tmp_path / "stranger", orgs=["finance"])
    stranger = identity.load_identity(tmp_path / "stranger", "finance")
    await refused(finance_api, pool, body(entries, signing.sign_submission(stranger, entries)), 422, "untrusted-signer")
    # An ops member signing in finance's name: its certificate says O=ops.
    ops = member(settings, "ops")
    as_finance = signing.sign_submission(ops, entries)
    misnamed = signing.Submission("finance", as_finance.cert_pem, as_finance.timestamp, as_finance.signature)
    problem = await refused(finance_api, pool, body(entries, misnamed), 422, "untrusted-signer")
    assert "belongs to 'ops'" in problem["detail"]
    # Issued by finance's own CA, but expired yesterday.
    now = datetime.now(UTC)
    expired = certificate_from(*offline_ca(settings, "finance"), "finance", now - timedelta(days=30),
                               now - timedelta(days=1))
    problem = await refused(finance_api, pool, body(entries, signing.sign_submission(expired, entries)),
                            422, "untrusted-signer")
    assert "not valid at" in problem["detail"]
    # Finance's own current member, once revoked: refused from the next append on, no restart needed.
    finance = member(settings, "finance")
    status, _, _ = await finance_api.post("/v1/ledger/entries", idem="before",
                                          json=body([sale(9)], signing.sign_submission(finance, [sale(9)])))
    assert status == 201
    identity.revoke(settings.data_dir, "finance", finance.cert.serial_number)
    problem = await refused(finance_api, pool, body(entries, signing.sign_submission(finance, entries)),
                            422, "untrusted-signer")
    assert "revoked" in problem["detail"]


@pytest.mark.parametrize("org", ["audit", "ops"])
async def test_a_valid_member_of_an_organisation_the_policy_does_not_allow_is_refused(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings, org: str) -> None:
    entries = [sale(1, amount=MILLION)]
    problem = await refused(finance_api, pool, body(entries, signing.sign_submission(member(settings, org), entries)),
                            403, "signer-not-allowed")
    assert f"signed by {org!r}" in problem["detail"] and "only finance may" in problem["detail"]


async def test_timestamps_far_from_the_clock_or_behind_the_log_are_refused(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings) -> None:
    finance, now = member(settings, "finance"), datetime.now(UTC)
    for moment, status, code in ((now - timedelta(hours=1), 409, "stale-signature"),
                                 (now + timedelta(hours=1), 422, "signature-timestamp-refused")):
        late = signing.sign_submission(finance, [sale(1)], format_timestamp(moment))
        await refused(finance_api, pool, body([sale(1)], late), status, code)
    misspelt = signing.sign_submission(finance, [sale(1)], now.isoformat())
    await refused(finance_api, pool, body([sale(1)], misspelt), 422, "signature-timestamp-refused")
    # (Certificates were issued a moment ago, so "earlier" is now and "later" a few seconds ahead.)
    earlier = signing.sign_submission(finance, [sale(1)], format_timestamp(now))
    later = signing.sign_submission(finance, [sale(2)], format_timestamp(now + timedelta(seconds=5)))
    status, _, _ = await finance_api.post("/v1/ledger/entries", idem="later", json=body([sale(2)], later))
    assert status == 201
    await refused(finance_api, pool, body([sale(1)], earlier), 409, "stale-signature")
    again = signing.sign_submission(finance, [sale(1)], format_timestamp(now + timedelta(seconds=6)))  # anew
    status, receipts, _ = await finance_api.post("/v1/ledger/entries", idem="again", json=body([sale(1)], again))
    assert status == 201 and receipts["receipts"][0]["seq"] == 1


async def test_a_batch_partly_in_the_log_is_refused_with_the_receipts_it_has(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings) -> None:
    finance = member(settings, "finance")
    first = {**sale(1), "entry_key": "sale:o-1:2024-05-01"}
    status, out, _ = await finance_api.post("/v1/ledger/entries", idem="one",
                                            json=body([first], signing.sign_submission(finance, [first])))
    assert status == 201
    both = [first, {**sale(2), "entry_key": "sale:o-2:2024-05-01"}]
    problem = await refused(finance_api, pool, body(both, signing.sign_submission(finance, both)),
                            409, "entries-already-in-log")
    assert problem["existing"] == {"entries.0": out["receipts"][0]["seq"]}


async def test_a_signed_append_goes_in_and_the_audit_calls_it_clean(
        finance_api: Api, pool: asyncpg.Pool, settings: Settings) -> None:
    entries = [sale(1), sale(2)]
    status, out, _ = await finance_api.post(
        "/v1/ledger/entries", idem="ok", json=body(entries, signing.sign_submission(member(settings, "finance"),
                                                                                    entries)))
    assert status == 201 and [r["seq"] for r in out["receipts"]] == [0, 1]
    row = await pool.fetchrow("SELECT org, statement FROM ledger.batches")
    assert (row["org"], row["statement"]) == ("finance", "submission")
    status, audit, _ = await finance_api.get("/v1/ledger/audit")
    assert status == 200 and audit["ok"], audit
