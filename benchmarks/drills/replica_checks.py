"""What must hold after two instances of every service shared one database under load.

Each check returns (problems, figures); an empty problem list means the promise held. The background
consumers leave traces a double worker could not hide: a projection batch applied twice publishes an
availability change whose `previous` is not the last published `available`; a fan-out batch worked twice
enqueues one (subscription, event) twice; two dispatchers on one delivery or queue overlap at the
receiver; two sweepers on one order release its units twice in the movement journal.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from benchmarks.drills.replica_traffic import CommitLog, LifecycleLog, Received, SseReader, WebhookReceiver

Findings = tuple[list[str], dict[str, Any]]


def orders_once(found_ids: set[str], log: LifecycleLog) -> Findings:
    """Every acknowledged order exists once; one key named one order, whichever instance answered."""
    problems = []
    by_key: dict[str, set[str]] = defaultdict(set)
    for ack in log.orders.acks:
        by_key[ack.key].add(ack.result_id)
    for key, order_id in log.retried.items():
        by_key[key].add(order_id)
    problems += [f"key {key} answered with several orders: {sorted(ids)}"
                 for key, ids in by_key.items() if len(ids) > 1]
    acknowledged = {order_id for ids in by_key.values() for order_id in ids}
    problems += [f"acknowledged order {i} is not in the database" for i in sorted(acknowledged - found_ids)[:20]]
    problems += [f"order {i} in the database was never acknowledged (a doubled placement?)"
                 for i in sorted(found_ids - acknowledged)[:20]]
    twins = sum(1 for ids in log.twins.values() if len(ids) == 2)
    return problems, {"orders acknowledged": len(acknowledged), "orders in database": len(found_ids),
                      "keys sent to both instances at once (both answered)": twins,
                      "placements per instance": dict(log.placed_by), "order actions": dict(log.actions)}


RELEASED_TWICE = """
SELECT order_id, count(*) AS expiries FROM orders.status_history WHERE event = 'expired'
GROUP BY 1 HAVING count(*) > 1
"""
# Per (order, sku, location): what the journal released must be what the allocation says was cancelled,
# and what the journal holds reserved for the order must be what the allocation still holds open.
JOURNAL_OFF_ALLOCATIONS = """
WITH alloc AS (SELECT a.order_id, ol.sku, a.location_id, sum(a.qty - a.fulfilled_qty - a.cancelled_qty) AS open,
                      sum(a.cancelled_qty) AS cancelled
               FROM orders.allocations a JOIN orders.order_lines ol USING (order_id, line_no) GROUP BY 1, 2, 3),
     journal AS (SELECT substr(reference, 7)::uuid AS order_id, sku, location_id, sum(reserved_delta) AS reserved,
                        coalesce(-sum(reserved_delta) FILTER (WHERE kind = 'release'), 0) AS released
                 FROM inventory.stock_movements WHERE reference LIKE 'order:%' GROUP BY 1, 2, 3)
SELECT order_id, sku, location_id, alloc.open, alloc.cancelled, journal.reserved, journal.released
FROM alloc FULL JOIN journal USING (order_id, sku, location_id)
WHERE coalesce(alloc.open, 0) <> coalesce(journal.reserved, 0)
   OR coalesce(alloc.cancelled, 0) <> coalesce(journal.released, 0)
"""
# Units that stayed allocated (open or shipped, not cancelled) beyond what the level ever received.
OVERSOLD = """
WITH received AS (SELECT sku, location_id, sum(on_hand_delta) AS units FROM inventory.stock_movements
                  WHERE kind = 'receipt' GROUP BY 1, 2),
     kept AS (SELECT ol.sku, a.location_id, sum(a.qty - a.cancelled_qty) AS units
              FROM orders.allocations a JOIN orders.order_lines ol USING (order_id, line_no) GROUP BY 1, 2)
SELECT k.sku, k.location_id, k.units AS kept, coalesce(r.units, 0) AS received
FROM kept k LEFT JOIN received r USING (sku, location_id) WHERE k.units > coalesce(r.units, 0)
"""


async def released_once(conn: asyncpg.Connection) -> Findings:
    problems = [f"order {r['order_id']} expired {r['expiries']} times" for r in await conn.fetch(RELEASED_TWICE)]
    problems += [f"movement journal off the allocations: {dict(r)}" for r in await conn.fetch(JOURNAL_OFF_ALLOCATIONS)]
    problems += [f"oversold: {dict(r)}" for r in await conn.fetch(OVERSOLD)]
    expired = await conn.fetchval("SELECT count(*) FROM orders.status_history WHERE event = 'expired'")
    return problems, {"orders expired by the sweepers": expired}


def availability_chain(rows: list[asyncpg.Record]) -> Findings:
    """Per SKU, each published change starts where the previous one ended (one change may carry several
    topics, in one transaction): a batch applied twice, or two projectors at once, would break it."""
    last: dict[str, tuple[int, str, int]] = {}  # sku -> (txid, payload bytes, available)
    problems, changes = [], 0
    for row in rows:
        payload = row["payload"]
        sku, raw = payload["sku"], orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
        before = last.get(sku)
        if before is not None and before[0] == row["txid"] and before[1] == raw:
            continue  # another topic of the same change
        changes += 1
        if before is not None and payload["previous"] != before[2]:
            problems.append(f"availability of {sku}: event {row['id']} changes it from {payload['previous']}, "
                            f"but the last change left it at {before[2]}")
        last[sku] = (row["txid"], raw, payload["available"])
    return problems[:20], {"availability changes published": changes}


def sse_in_order(readers: dict[str, SseReader], expected: dict[str, list[int]]) -> Findings:
    """Every reader saw exactly the events of its family after its start, in outbox order."""
    problems, seen = [], {}
    for name, reader in readers.items():
        family = name.split("@")[0]
        want, got = expected[family], reader.ids
        seen[name] = len(got)
        if got != want:
            missing, extra = sorted(set(want) - set(got)), len(got) - len(set(got))
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                         min(len(got), len(want)))
            problems.append(f"SSE {name}: saw {len(got)} events, expected {len(want)} (first difference at #{first},"
                            f" {len(missing)} missing, {extra} repeated){'; ' + reader.error if reader.error else ''}")
    moves = {name: reader.connections for name, reader in readers.items() if len(reader.urls) > 1}
    return problems, {"SSE events seen per reader": seen, "SSE switching readers' connections": moves}


DELIVERIES = """
SELECT d.id, d.subscription_id, d.event_id, d.key, d.status, d.attempts, d.coalesced, s.url,
       (SELECT count(*) FROM ecommerce.webhook_attempt_log a WHERE a.delivery_id = d.id) AS logged
FROM ecommerce.webhook_deliveries d JOIN ecommerce.webhook_subscriptions s ON s.id = d.subscription_id
"""
# Per subscription, the events it asked for (the dispatcher's own rule: topic subscribed, published at
# or after the subscription) against what its deliveries stand for: each one itself plus those it folded.
CONSERVED = """
SELECT s.id, s.url,
       (SELECT count(*) FROM core.events e WHERE e.topic = ANY(s.events) AND e.created_at >= s.created_at) AS events,
       (SELECT coalesce(sum(1 + d.coalesced), 0) FROM ecommerce.webhook_deliveries d WHERE d.subscription_id = s.id)
           AS carried,
       (SELECT count(*) - count(DISTINCT d.event_id) FROM ecommerce.webhook_deliveries d
        WHERE d.subscription_id = s.id) AS doubled
FROM ecommerce.webhook_subscriptions s
"""


ATTEMPTS = """
SELECT delivery_id, attempt, coalesce(status_code BETWEEN 200 AND 299, false) AS ok, status_code, error
FROM ecommerce.webhook_attempt_log
"""


async def webhooks_once(conn: asyncpg.Connection, receiver: WebhookReceiver) -> Findings:
    """Fan-out enqueued each (subscription, event) once; each delivery was sent in turn and delivered once,
    again only after a failure: a 503 the receiver chose, or one the dispatcher logged on its side (a
    timeout on a starved machine; at-least-once then allows the receiver a second 200)."""
    problems = []
    for row in await conn.fetch(CONSERVED):
        if row["events"] != row["carried"]:
            problems.append(f"subscription {row['id']}: {row['events']} events, deliveries carry {row['carried']}")
        if row["doubled"]:
            problems.append(f"subscription {row['id']}: {row['doubled']} events enqueued twice (fan-out worked twice)")
    deliveries = {r["id"]: r for r in await conn.fetch(DELIVERIES)}
    logged = {(r["delivery_id"], r["attempt"]): r for r in await conn.fetch(ATTEMPTS)}
    # A request the dispatcher gave up on without an answer (a timeout) may still reach the receiver late.
    abandoned = {key for key, r in logged.items() if r["status_code"] is None}
    live = [r for r in sorted(receiver.received, key=lambda r: r.arrived)
            if (r.delivery_id, r.attempt) not in abandoned]
    by_delivery: dict[int, list[Received]] = defaultdict(list)
    by_queue: dict[tuple[str, str], list[Received]] = defaultdict(list)
    for found in live:
        by_delivery[found.delivery_id].append(found)
        by_queue[(found.subscription, found.key)].append(found)
    problems += [f"delivery {d['id']} is {d['status']}, not delivered" for d in deliveries.values()
                 if d["status"] != "delivered"][:20]
    problems += [f"received delivery {r.delivery_id} attempt {r.attempt}, which the dispatcher did not log"
                 for r in receiver.received if (r.delivery_id, r.attempt) not in logged][:20]
    for delivery_id, row in deliveries.items():
        ok = [r for r in by_delivery.get(delivery_id, []) if r.status == 200]
        if len(ok) != 1:
            problems.append(f"delivery {delivery_id} answered 200 {len(ok)} times (want exactly once)")
        if row["logged"] != row["attempts"]:
            problems.append(f"delivery {delivery_id}: {row['attempts']} attempts counted, {row['logged']} logged")
        for attempt in range(1, row["attempts"]):
            failed = logged.get((delivery_id, attempt))
            chosen = receiver.failed_on_purpose(delivery_id, attempt)
            if failed is None or failed["ok"] or not (chosen or failed["status_code"] is None):
                problems.append(f"delivery {delivery_id} sent again after attempt {attempt}, which did not fail")
    problems += _overlaps(by_delivery, "delivery") + _overlaps(by_queue, "queue")
    for queue, found in by_queue.items():
        ok = [(r.delivery_id, r.event_id) for r in found if r.status == 200]
        if ok != sorted(ok) or len({e for _, e in ok}) != len(ok):
            problems.append(f"queue {queue} delivered out of order: {ok[:10]}")
    if bad := sum(1 for r in receiver.received if not r.signed):
        problems.append(f"{bad} webhook requests carried a signature that does not verify")
    chosen_retries = sum(1 for (d, a), r in logged.items() if not r["ok"] and receiver.failed_on_purpose(d, a))
    return problems[:40], {"webhook deliveries": len(deliveries), "webhook requests received": len(receiver.received),
                           "webhook retries (each after a 503 the receiver chose)": chosen_retries,
                           "webhook retries after a failure on the sender's side (timeouts)": len(abandoned),
                           "webhook sender-side errors": dict(Counter(str(logged[k]["error"])[:60] for k in abandoned)),
                           "webhook requests per sending instance": dict(receiver.senders)}


def _overlaps(groups: dict[Any, list[Received]], what: str) -> list[str]:
    """Requests of one delivery (or one queue) must follow each other: the next arrives after the
    previous was answered. Two dispatchers working one of them at once would overlap here."""
    problems = []
    for name, found in groups.items():
        for earlier, later in zip(found, found[1:], strict=False):
            if later.arrived < earlier.answered:
                problems.append(f"{what} {name}: delivery {later.delivery_id} attempt {later.attempt} arrived "
                                f"while delivery {earlier.delivery_id} attempt {earlier.attempt} was in flight")
    return problems[:20]


async def ledger_in_one_order(conn: asyncpg.Connection, commits: CommitLog) -> Findings:
    """Seqs 0..n-1 without a gap; batches one after another in seq and time; checkpoints likewise; every
    receipt finance recorded names the entry the ledger holds under that key."""
    problems = list(commits.unexpected[:20])
    size, top = await conn.fetchrow("SELECT count(*), coalesce(max(seq) + 1, 0) FROM ledger.entries")
    if size != top:
        problems.append(f"ledger seqs have gaps: {size} entries, highest seq {top - 1}")
    batches = await conn.fetch(
        "SELECT b.id, b.org, b.first_seq, b.last_seq, b.signed_at, min(e.seq) AS low, max(e.seq) AS high"
        " FROM ledger.batches b LEFT JOIN ledger.entries e ON e.batch_id = b.id GROUP BY b.id ORDER BY b.id")
    next_seq, last_time = 0, None
    for b in batches:
        signed = datetime.fromisoformat(b["signed_at"])
        if b["first_seq"] != next_seq or (b["low"], b["high"]) != (b["first_seq"], b["last_seq"]):
            problems.append(f"ledger batch {b['id']} covers {b['first_seq']}..{b['last_seq']} (entries "
                            f"{b['low']}..{b['high']}), expected to start at {next_seq}")
        if last_time is not None and signed < last_time:
            problems.append(f"ledger batch {b['id']} signed at {b['signed_at']}, before the batch before it")
        next_seq, last_time = b["last_seq"] + 1, signed
    checkpoints = await conn.fetch("SELECT tree_size, signed_at FROM ledger.checkpoints ORDER BY tree_size")
    times = [datetime.fromisoformat(c["signed_at"]) for c in checkpoints]
    if times != sorted(times):
        problems.append("ledger checkpoints are not in time order by tree size")
    wrong = await conn.fetch(
        "SELECT c.entry_key, c.receipt FROM finance.ledger_commits c LEFT JOIN ledger.entries e"
        " ON e.seq = (c.receipt->>'seq')::bigint AND e.entry_key = c.entry_key AND e.kind = c.kind"
        " WHERE e.seq IS NULL")
    problems += [f"finance recorded {r['entry_key']} at {r['receipt']}, the ledger holds no such entry there"
                 for r in wrong[:20]]
    orgs: dict[str, int] = defaultdict(int)
    for b in batches:
        orgs[b["org"]] += 1
    committed = await conn.fetchval("SELECT count(*) FROM finance.ledger_commits")
    return problems, {"ledger entries": size, "ledger batches per organisation": dict(orgs),
                      "ledger checkpoints": len(checkpoints), "finance entries committed": committed,
                      "finance runs committed through both instances": len(commits.runs),
                      "finance outcomes": dict(commits.outcomes)}
