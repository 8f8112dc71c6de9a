"""E-commerce rules, free of I/O: sellable numbers, stock states, webhook signing, backoff, SSRF policy."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import NamedTuple
from urllib.parse import urlsplit

from shared.errors import Problem


class StaleWebhook(Problem):
    """A correctly signed inbound webhook too old to act on: a replay, or a retry past any schedule."""

    status, code, title = 422, "stale-webhook", "Webhook delivery too old"


DEFAULT_SCOPE = "*"  # the default rule's key; '*' can never be a SKU
STATES = ("in_stock", "low_stock", "out_of_stock")
AVAILABILITY_TOPICS = (
    "availability.changed",
    "availability.low_stock",
    "availability.out_of_stock",
    "availability.back_in_stock",
)
COALESCABLE_TOPIC = "availability.changed"  # a snapshot: only the newest one matters to a receiver
BATCH_TOPIC = "availability.batch"  # one delivery carrying many SKUs' changes (opt-in per subscription)


@dataclass(frozen=True)
class Rule:
    """A channel rule as stored: any field may be None (inherit the default's)."""

    buffer_kind: str | None = None  # "absolute" | "percent"
    buffer_value: Decimal | None = None
    low_stock_threshold: int | None = None


class Availability(NamedTuple):  # built per SKU of every batch: a named tuple is the cheapest immutable
    ship_available: int
    sellable: int
    state: str


NOTHING = Availability(0, 0, "out_of_stock")


def effective_rule(own: Rule | None, default: Rule | None) -> Rule:
    """A SKU's own buffer and threshold where set, else the default's, else none."""
    own, default = own or Rule(), default or Rule()
    if own.buffer_kind is not None:
        kind, value = own.buffer_kind, own.buffer_value
    else:
        kind, value = default.buffer_kind, default.buffer_value
    threshold = own.low_stock_threshold if own.low_stock_threshold is not None else default.low_stock_threshold
    return Rule(kind, value, threshold)


def held_back(ship_available: int, rule: Rule) -> int:
    """Units the channel buffer keeps from online sale; a percentage rounds up (never oversell)."""
    if rule.buffer_kind is None or rule.buffer_value is None:
        return 0
    if rule.buffer_kind == "absolute":
        return int(rule.buffer_value)
    units = (Decimal(ship_available) * rule.buffer_value / 100).to_integral_value(rounding=ROUND_CEILING)
    return int(units)


def stock_state(sellable: int, low_stock_threshold: int | None) -> str:
    if sellable <= 0:
        return "out_of_stock"
    if low_stock_threshold is not None and sellable <= low_stock_threshold:
        return "low_stock"
    return "in_stock"


def availability(ship_available: int, rule: Rule) -> Availability:
    sellable = max(0, ship_available - held_back(ship_available, rule))
    return Availability(ship_available, sellable, stock_state(sellable, rule.low_stock_threshold))


def change_topics(old: Availability, new: Availability) -> list[str]:
    """Outbox topics a change publishes: `changed` when the sellable number moves, plus one per state
    transition (leaving out-of-stock is back-in-stock; entering low and out are their own events)."""
    topics = ["availability.changed"] if old.sellable != new.sellable else []
    if old.state != new.state:
        if old.state == "out_of_stock":
            topics.append("availability.back_in_stock")
        if new.state == "low_stock":
            topics.append("availability.low_stock")
        if new.state == "out_of_stock":
            topics.append("availability.out_of_stock")
    return topics


def change_payload(sku: str, old: Availability, new: Availability) -> dict[str, object]:
    return {
        "sku": sku, "available": new.sellable, "previous": old.sellable, "state": new.state,
        "previous_state": old.state, "ship_available": new.ship_available,
    }


# --- webhooks -------------------------------------------------------------------------------------


SIGNATURE_TOLERANCE_S = 300  # how far a receiver should let the signed time be from its own clock


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def batch_body(change_bodies: list[bytes]) -> bytes:
    """An availability.batch delivery: each change exactly as a one-change delivery's body, in order.

    Spliced rather than re-encoded: each body is already canonical JSON, and the bytes a receiver
    verifies per change are the ones single deliveries carry."""
    return b'{"topic":"%s","changes":[%s]}' % (BATCH_TOPIC.encode(), b",".join(change_bodies))


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`X-Omnistock-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`.

    The time is inside the MAC, so a receiver that refuses an old `t` refuses a captured message
    replayed later; the body alone was signed before, and a replay days later verified."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(secret: str, header: str, body: bytes, now: float,
                     tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does: one `t`, one or more `v1` (any may match, so secrets can be rotated),
    compared in constant time, and `t` within `tolerance_s` of `now` either way."""
    timestamps, macs = [], []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            macs.append(value)
    if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()) or not macs:
        return False
    timestamp = int(timestamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode()
    return any(hmac.compare_digest(expected, mac.encode()) for mac in macs)


def backoff_s(attempt: int, base_s: float, cap_s: float, jitter: float) -> float:
    """Delay before retry number `attempt` (1 = after the first failure): exponential, capped, with
    "equal jitter" (`jitter` in [0, 1)) so that many failed receivers do not retry in lockstep."""
    ceiling = min(cap_s, base_s * math.pow(2, min(attempt - 1, 60)))
    return ceiling / 2 + ceiling / 2 * jitter


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

WEB_PORTS = frozenset({80, 443})
LOCAL_NAMES = ("localhost", "localhost.localdomain")  # the local machine by name: judged as 127.0.0.1
# IPv6 forms with an IPv4 address inside, which a translator, a relay or the kernel itself turns into a
# connection to that IPv4 address: judged by the address inside (Python's is_global does not look).
_IPV4_IN_LAST_32_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # SIIT, IPv4-translated (RFC 6145)
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, RFC 4291)
)
# Tunnels refused whatever they carry: Teredo relays to any host (its client address is obfuscated, and
# no subscriber needs it); a local-use NAT64 prefix's length, so where its IPv4 sits, is the operator's
# choice (RFC 8215), so the address inside cannot be read.
_REFUSED_TUNNELS = (ipaddress.IPv6Network("2001::/32"), ipaddress.IPv6Network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class AllowEntry:
    """One OMNISTOCK_WEBHOOK_ALLOW_HOSTS entry: a host name or an IP network, on one port or (None) any."""

    host: str | None
    network: Network | None
    port: int | None


def parse_allow_entry(raw: str) -> AllowEntry:
    """`name`, `IP`, `CIDR`, each optionally followed by `:port` (an IPv6 address in brackets then)."""
    text, port = raw.strip(), None
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and (":" not in head or (head.startswith("[") and head.endswith("]"))):
        text, port = head, int(tail)
    text = text.removeprefix("[").removesuffix("]")
    try:
        return AllowEntry(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        return AllowEntry(text.lower().rstrip("."), None, port)


def parse_allow_list(entries: list[str]) -> tuple[AllowEntry, ...]:
    return tuple(parse_allow_entry(entry) for entry in entries)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64, SIIT, IPv4-compatible or 6to4 address leads to."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour  # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16-48


def allow_listed(allow_list: list[str], host: str, addresses: list[Address], port: int | None) -> bool:
    """Whether an entry names this host (as written in the URL) or holds one of these addresses, on
    this port or on any port."""
    name = host.lower().rstrip(".").removeprefix("[").removesuffix("]")
    for entry in parse_allow_list(allow_list):
        if entry.port is not None and entry.port != port:
            continue
        if entry.host is not None and entry.host == name:
            return True
        if entry.network is not None and any(a in entry.network for a in addresses):
            return True
    return False


def address_allowed(ip: str, host: str, allow_list: list[str], port: int | None = None) -> bool:
    """A destination may be reached if it is a public address, or allow-listed by name or network.

    Private, loopback, link-local (cloud metadata at 169.254.169.254), multicast, reserved and
    unspecified addresses are refused: a subscriber must not turn our dispatcher into a probe of
    the internal network. So are IPv6 addresses that lead to such an IPv4 address (embedded_ipv4).
    """
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    # An IPv4 entry also covers that address IPv4-mapped (how a dual-stack socket shows it), but not
    # its NAT64, 6to4 or other forms, which reach it through some translator: list those as themselves.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if allow_listed(allow_list, host, [address] if mapped is None else [address, mapped], port):
        return True
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _REFUSED_TUNNELS):
        return False
    judged = inner or address
    return judged.is_global and not judged.is_multicast


def port_allowed(host: str, port: int, allow_list: list[str]) -> bool:
    """Webhooks go to web ports; any other port must be allow-listed with the URL's host (by name, or
    for an IP literal by its network), with that port or with none. Names are judged as written: a
    name resolving into an allow-listed network still needs 80 or 443."""
    if port in WEB_PORTS:
        return True
    ip = literal_ip(host) or ("127.0.0.1" if host.lower().rstrip(".") in LOCAL_NAMES else None)
    return allow_listed(allow_list, host, [ipaddress.ip_address(ip)] if ip else [], port)


def url_problem(url: str) -> str | None:
    """Why a webhook URL is unacceptable on its face (scheme, host, credentials), or None."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs"
    if not parts.hostname:
        return "the URL needs a host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed; sign with the secret instead"
    if port == 0:
        return "port 0 is not a port"
    if parts.fragment:
        return "a URL fragment is never sent; remove it"
    return None


def literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def collapse_snapshots(items: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """Coalesce rapid changes: in a sequence of (topic, key), a snapshot topic that directly follows
    another of the same key (no other message of that key between) replaces it. Returns the kept
    positions, in order, each with how many earlier snapshots it absorbed. Per-key order is unchanged."""
    kept: dict[int, int] = {}
    last_of_key: dict[str, int] = {}
    for index, (topic, key) in enumerate(items):
        previous = last_of_key.get(key)
        if previous is not None and topic == COALESCABLE_TOPIC and items[previous][0] == COALESCABLE_TOPIC:
            kept[index] = kept.pop(previous) + 1
        else:
            kept[index] = 0
        last_of_key[key] = index
    return sorted(kept.items())
