"""Outbound webhook signatures cover the timestamp and the body together, so a captured message cannot
be sent again later: `X-Omnistock-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from services.ecommerce import domain

SECRET = "whsec_test_0123456789abcdef"
BODY = b'{"id":7,"topic":"availability.changed","data":{"sku":"TEE-M","available":5}}'
T = 1_790_000_000


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    # Computed here the way a receiver would, not with the code under test.
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert domain.signature(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_a_fresh_signature_verifies() -> None:
    header = domain.signature(SECRET, T, BODY)
    assert domain.verify_signature(SECRET, header, BODY, now=T + 10)
    assert domain.verify_signature(SECRET, header, BODY, now=T - 10)  # a receiver's clock a little behind


def test_a_body_only_hmac_no_longer_verifies() -> None:
    body_only = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert not domain.verify_signature(SECRET, f"sha256={body_only}", BODY, now=T)
    assert not domain.verify_signature(SECRET, f"t={T},v1={body_only}", BODY, now=T)


def test_altering_the_timestamp_breaks_the_signature() -> None:
    v1 = domain.signature(SECRET, T, BODY).split(",v1=")[1]
    assert not domain.verify_signature(SECRET, f"t={T + 1},v1={v1}", BODY, now=T + 1)
    assert not domain.verify_signature(SECRET, f"t={T + 86_400},v1={v1}", BODY, now=T + 86_400)


def test_altering_the_body_or_the_secret_breaks_the_signature() -> None:
    header = domain.signature(SECRET, T, BODY)
    assert not domain.verify_signature(SECRET, header, BODY.replace(b"5", b"9"), now=T)
    assert not domain.verify_signature(SECRET + "x", header, BODY, now=T)


@pytest.mark.parametrize("age_s", [301, 3600, 3 * 86_400, -301])
def test_an_old_or_far_future_timestamp_is_refused_even_if_signed(age_s: int) -> None:
    header = domain.signature(SECRET, T, BODY)
    assert not domain.verify_signature(SECRET, header, BODY, now=T + age_s)
    assert domain.verify_signature(SECRET, header, BODY, now=T + age_s, tolerance_s=abs(age_s) + 1)


@pytest.mark.parametrize("header", [
    "", "t=,v1=", "v1=abc", f"t={T}", f"t=abc,v1={'0' * 64}", f"t={T},v2={'0' * 64}", "garbage",
    f"t={T},t={T + 1},v1={'0' * 64}", f"t=1e9,v1={'0' * 64}",
])
def test_malformed_headers_do_not_verify(header: str) -> None:
    assert not domain.verify_signature(SECRET, header, BODY, now=T)


def test_any_of_several_v1_values_may_match() -> None:
    """Room for rotating secrets: a receiver accepts the header if one v1 matches."""
    good = domain.signature(SECRET, T, BODY).split(",v1=")[1]
    assert domain.verify_signature(SECRET, f"t={T},v1={'0' * 64},v1={good}", BODY, now=T)
