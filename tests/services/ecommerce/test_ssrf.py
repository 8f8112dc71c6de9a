"""Webhook targets: only http(s), never private/loopback/link-local addresses unless allow-listed."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

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


def test_rapid_snapshots_of_one_sku_collapse_but_transitions_keep_their_place() -> None:
    changed, out = "availability.changed", "availability.out_of_stock"
    items = [(changed, "A"), (changed, "B"), (changed, "A"), (out, "A"), (changed, "A"), (changed, "A")]
    assert domain.collapse_snapshots(items) == [(1, 0), (2, 1), (3, 0), (5, 1)]


# IPv6 forms that carry an IPv4 address inside them: a NAT64 gateway, a 6to4 relay or the kernel
# itself would turn each into a connection to that IPv4 address.
HIDDEN_IPV4 = [
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::10.0.0.1",
    "::ffff:0:7f00:1",  # SIIT / IPv4-translated
    "::ffff:0:a9fe:a9fe",  # ... of 169.254.169.254, the metadata service
    "64:ff9b::7f00:1",  # NAT64 well-known prefix
    "64:ff9b::a00:1",
    "64:ff9b:1::808:808",  # NAT64 local-use prefix: where the IPv4 sits is the operator's choice
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo (client 127.0.0.1, obfuscated)
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo of 8.8.8.8: refused all the same
    "::ffff:127.0.0.1",
]


@pytest.mark.parametrize("ip", HIDDEN_IPV4)
def test_ipv6_forms_that_embed_a_non_public_ipv4_are_refused(ip: str) -> None:
    assert domain.address_allowed(ip, "some.host", []) is False
    assert refusal(f"https://[{ip}]/hook", []) is not None


@pytest.mark.parametrize("ip", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"])
def test_ipv6_forms_that_embed_a_public_ipv4_are_judged_by_it(ip: str) -> None:
    assert domain.address_allowed(ip, "some.host", []) is True


async def test_hidden_ipv4_subscriptions_are_refused_naming_the_url(channel: Channel) -> None:
    for ip in ("::127.0.0.1", "64:ff9b::7f00:1", "::ffff:0:7f00:1", "2002:7f00:1::"):
        status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={
            "url": f"http://[{ip}]/hook", "events": ["availability.changed"], "secret": SECRET})
        assert_problem(status, body, 422, "validation-failed", field="url")
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0


class _FixedResolver(AbstractResolver):
    """What a hostile DNS server would answer for any name."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6, proto=0, flags=0)
                for a in self.addresses]

    async def close(self) -> None:
        return None


async def test_a_name_resolving_to_hidden_ipv4_is_refused_when_connecting() -> None:
    resolver = PolicyResolver([], inner=_FixedResolver(["64:ff9b::7f00:1", "2002:a00:1::", "::ffff:0:a00:1"]))
    with pytest.raises(RefusedDestination):
        await resolver.resolve("hooks.example.com", 443)
    mixed = PolicyResolver([], inner=_FixedResolver(["::7f00:1", "2606:4700:4700::1111"]))
    assert [r["host"] for r in await mixed.resolve("hooks.example.com", 443)] == ["2606:4700:4700::1111"]


@pytest.mark.parametrize("url", [
    "https://example.com:8443/hook", "http://example.com:22/hook", "http://example.com:6379/",
    "https://8.8.8.8:25/hook", "http://[2606:4700:4700::1111]:8080/hook",
])
def test_only_ports_80_and_443_unless_allow_listed(url: str) -> None:
    assert refusal(url, []) is not None


def test_a_port_is_allow_listed_with_its_host_or_by_the_host_alone() -> None:
    assert refusal("https://example.com/hook", []) is None
    assert refusal("http://example.com:443/hook", []) is None
    assert refusal("https://example.com:80/hook", []) is None
    assert refusal("https://example.com:8443/hook", ["example.com:8443"]) is None
    assert refusal("https://example.com:8444/hook", ["example.com:8443"]) is not None
    assert refusal("https://other.example.com:8443/hook", ["example.com:8443"]) is not None
    assert refusal("https://8.8.8.8:8443/hook", ["8.8.8.8:8443"]) is None
    assert refusal("https://[2606:4700:4700::1111]:8443/h", ["[2606:4700:4700::1111]:8443"]) is None
    assert refusal("https://example.com:8443/hook", ["example.com"]) is None  # the host on any port
    assert refusal("http://10.1.2.3:9000/hook", ["10.0.0.0/8"]) is None
    # A host:port entry opens that port of that host: it is no wider than the host entry.
    assert refusal("http://10.1.2.3:9000/hook", ["10.1.2.3:9001"]) is not None
    assert refusal("http://10.1.2.3:9001/hook", ["10.1.2.3:9001"]) is None


async def test_a_subscription_to_a_non_web_port_is_refused_naming_the_url(channel: Channel) -> None:
    status, body, _ = await channel.ecommerce.post("/v1/webhooks", json={
        "url": "https://example.com:6379/hook", "events": ["availability.changed"], "secret": SECRET})
    assert_problem(status, body, 422, "validation-failed", field="url")
    assert await channel.pool.fetchval("SELECT count(*) FROM ecommerce.webhook_subscriptions") == 0


async def test_a_host_port_entry_lifts_the_address_rule_on_that_port_only() -> None:
    internal = _FixedResolver(["10.0.0.5"])
    assert domain.address_allowed("10.0.0.5", "hooks.internal", ["hooks.internal:8443"], 8443)
    assert not domain.address_allowed("10.0.0.5", "hooks.internal", ["hooks.internal:8443"], 9000)
    assert await PolicyResolver(["hooks.internal:8443"], inner=internal).resolve("hooks.internal", 8443)
    with pytest.raises(RefusedDestination):
        await PolicyResolver(["hooks.internal:8443"], inner=internal).resolve("hooks.internal", 443)
    assert domain.parse_allow_entry("[::1]:8080") == domain.AllowEntry(None, ipaddress.ip_network("::1"), 8080)
    assert domain.parse_allow_entry("2001:db8::1:8080").port is None  # an address; a port needs brackets
