"""Webhook targets: only http(s), never private/loopback/link-local addresses unless allow-listed."""

from __future__ import annotations

import pytest

from services.ecommerce import domain
from services.ecommerce.delivery import PolicyResolver, RefusedDestination, Sender, refusal
from shared.settings import Settings
from tests.conftest import assert_problem
from tests.services.ecommerce.conftest import Channel

SECRET = "whsec_test_0123456789abcdef"


UNSAFE = [
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "http:///nohost",
    "http://user:pw@example.com/hook",
    "http://10.0.0.7/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]:8080/hook",
    "http://[::ffff:10.0.0.1]/hook",
    "http://0.0.0.0/hook",
    "http://127.0.0.2/hook",  # the allow-list names 127.0.0.1 only
    "http://example.com:99999/hook",
]


async def test_unsafe_webhook_urls_are_refused_naming_the_field(channel: Channel) -> None:
    for url in UNSAFE:
        status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={
            "url": url, "events": ["availability.changed"], "secret": SECRET})
        assert_problem(status, body, 422, "validation-failed", field="url")
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0


@pytest.mark.parametrize("ip,allowed", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("100.64.0.1", False),
    ("169.254.169.254", False), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    ("::ffff:127.0.0.1", False), ("224.0.0.1", False), ("0.0.0.0", False),
])
def test_only_public_addresses_are_allowed_by_default(ip: str, allowed: bool) -> None:
    assert domain.address_allowed(ip, "some.host", []) is allowed


def test_allow_list_takes_names_addresses_and_networks() -> None:
    assert domain.address_allowed("10.1.2.3", "hooks.internal", ["hooks.internal"])
    assert domain.address_allowed("10.1.2.3", "x", ["10.0.0.0/8"])
    assert domain.address_allowed("127.0.0.1", "x", ["127.0.0.1"])
    assert not domain.address_allowed("127.0.0.2", "x", ["127.0.0.1"])
    assert refusal("http://127.0.0.1:8080/h", ["127.0.0.1"]) is None
    assert refusal("https://example.com/h", []) is None
    assert refusal("http://localhost:9000/h", []) is not None
    assert refusal("http://localhost:9000/h", ["127.0.0.1"]) is None  # it is where localhost points


async def test_a_name_resolving_to_loopback_is_refused_when_connecting() -> None:
    """The check sits in the resolver aiohttp connects with, so DNS cannot swap the address later."""
    with pytest.raises(RefusedDestination):
        await PolicyResolver([]).resolve("localhost", 80)
    assert await PolicyResolver(["localhost"]).resolve("localhost", 80)
    sender = Sender(Settings(_env_file=None, webhook_allow_hosts=[], webhook_timeout_s=2))  # type: ignore[call-arg]
    await sender.start()
    try:
        # "localhost." dodges the literal-name check: the resolver still refuses it.
        outcome = await sender.send("http://localhost.:9/hook", b"{}", {})
    finally:
        await sender.close()
    assert not outcome.ok and outcome.error is not None and outcome.error.startswith("refused"), outcome


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    assert domain.backoff_s(1, 1.0, 60.0, 0.0) == 0.5
    assert domain.backoff_s(1, 1.0, 60.0, 0.999) < 1.0
    assert domain.backoff_s(4, 1.0, 60.0, 0.0) == 4.0
    assert domain.backoff_s(30, 1.0, 60.0, 0.999) <= 60.0


def test_signature_is_hex_hmac_sha256_of_the_raw_body() -> None:
    # RFC 4231 test case 2.
    assert domain.signature("Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_rapid_snapshots_of_one_sku_collapse_but_transitions_keep_their_place() -> None:
    changed, out = "availability.changed", "availability.out_of_stock"
    items = [(changed, "A"), (changed, "B"), (changed, "A"), (out, "A"), (changed, "A"), (changed, "A")]
    assert domain.collapse_snapshots(items) == [(1, 0), (2, 1), (3, 0), (5, 1)]
