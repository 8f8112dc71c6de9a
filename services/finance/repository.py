"""All SQL of the finance service. Sales are read from orders.sales and orders.orders, never written."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import date
from typing import Any

import asyncpg

from services.finance.domain import Item, Scope
from shared.db import Connection, Pool

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# A provider names the order by our id or by the channel's external id; probing the (channel,
# external_id) index once per channel keeps this an index lookup.
RESOLVE_ORDER_TEMPLATE = """
    coalesce(
        (SELECT o.id FROM orders.orders o
          WHERE o.id = CASE WHEN REF ~ 'PATTERN' THEN REF::uuid END),
        (SELECT o.id FROM orders.orders o
          WHERE o.channel = ANY (ARRAY['online', 'store']) AND o.external_id = REF
          ORDER BY o.channel LIMIT 1))
""".replace("PATTERN", UUID_PATTERN)


def resolve_order(ref: str) -> str:
    return RESOLVE_ORDER_TEMPLATE.replace("REF", ref)
ITEM_COLUMNS = ("run_id", "item_no", "kind", "class", "order_id", "order_ref", "channel", "location_id", "tender",
                "currency", "sales_total", "expected", "paid", "difference", "sale_ids", "settlement_ids", "note")
STAGING_COLUMNS = ("line", "provider", "external_id", "order_ref", "type", "amount", "fee", "currency",
                   "settled_at")


# --- settlements ------------------------------------------------------------------------------------


SETTLEMENT_VALUES = "(%s.order_ref, %s.type, %s.amount, %s.fee, %s.currency, %s.settled_at)"


def _values(alias: str) -> str:
    return SETTLEMENT_VALUES.replace("%s", alias)


async def create_staging(conn: Connection) -> None:
    """The table a file is COPYed into, in the import's transaction (and gone with it)."""
    await conn.execute(
        "CREATE TEMP TABLE finance_staging (line int, provider text, external_id text, order_ref text, type text,"
        " amount numeric(14,2), fee numeric(14,2), currency text, settled_at timestamptz, voided_id bigint)"
        " ON COMMIT DROP")


def staging_copy(batch: Sequence[tuple[int, tuple[str, ...]]]) -> bytes:
    """COPY text of checked rows (settlement_file.StagedRow) for finance_staging's STAGING_COLUMNS."""
    text = "".join(f"{line}\t{provider}\t{external_id}\t{order}\t{kind}\t{amount}\t{fee}\t{currency}\t{settled_at}\n"
                   for line, (provider, external_id, order, kind, amount, fee, currency, settled_at) in batch)
    # COPY's text format: free text holds no tab, newline or CR (shared/text.py refuses them) and the
    # other values no backslash, so doubling every backslash is all the escaping there is to do.
    return (text.replace("\\", "\\\\") if "\\" in text else text).encode()


async def copy_staging(conn: Connection, source: AsyncIterable[bytes]) -> None:
    await conn.copy_to_table("finance_staging", schema_name="pg_temp", columns=STAGING_COLUMNS, source=source)


async def import_staged(conn: Connection, staged: int, source: str, actor: str,
                        reimport_voided: bool) -> tuple[int, int, int, int, list[asyncpg.Record]]:
    """Insert the new rows of finance_staging (`staged` rows) in one statement, and return (batch id,
    inserted, skipped as repeats of a voided settlement, rows that repeat an earlier line of the file
    with the same values, rows that cannot go in: another live value under their key, or none at all
    because it was voided while this file went in). Problem rows carry `this_file` (the other value
    came from an earlier line of the same file) and `first_line` (that line)."""
    batch_id = await conn.fetchval(
        "INSERT INTO finance.import_batches (source, received, inserted, already, imported_by)"
        " VALUES ($1, $2, 0, 0, $3) RETURNING id", source, staged, actor)
    skipped = 0
    # No ORDER BY line below (a sort of a million rows spills to disk): the staging table is read in
    # the order the COPY wrote it, which is the file's (a temp table is scanned by this session alone,
    # never in parallel nor from the middle; the UPDATE moves only the rows the INSERT leaves out). So
    # ids follow the file, and of a key given twice the first line goes in.
    if not reimport_voided:
        status = await conn.execute(f"""
            UPDATE pg_temp.finance_staging st SET voided_id = v.id
              FROM finance.settlements v
             WHERE v.provider = st.provider AND v.external_id = st.external_id AND v.voided_at IS NOT NULL
               AND {_values('v')} IS NOT DISTINCT FROM {_values('st')}
               AND NOT EXISTS (SELECT 1 FROM finance.settlements l
                                WHERE l.provider = st.provider AND l.external_id = st.external_id
                                  AND l.voided_at IS NULL)""")
        skipped = int(status.split()[-1])
    status = await conn.execute(f"""
        INSERT INTO finance.settlements (provider, external_id, order_ref, order_id, type, amount, fee, currency,
                                         settled_at, batch_id)
        SELECT st.provider, st.external_id, st.order_ref, {resolve_order('st.order_ref')},
               st.type, st.amount, st.fee, st.currency, st.settled_at, $1
          FROM pg_temp.finance_staging st
         WHERE st.voided_id IS NULL
        ON CONFLICT (provider, external_id) WHERE voided_at IS NULL DO NOTHING""", batch_id)
    inserted = int(status.split()[-1])
    repeats, problems = 0, []
    if staged > inserted + skipped:
        # Some rows met a live row under their key: the same values (imported before, or an earlier
        # line of this file) or others. Checked after the insert, so a concurrent import of the same
        # keys has committed (or rolled back) by now: whatever is live under a key is what the key
        # means. A key with no live row at all was voided after the insert found its live row; it was
        # not imported, so it is reported, not lost. A file of new rows only never gets here.
        repeats = await conn.fetchval(f"""
            SELECT count(*) FROM pg_temp.finance_staging st
              JOIN finance.settlements s
                ON s.provider = st.provider AND s.external_id = st.external_id AND s.voided_at IS NULL
             WHERE st.voided_id IS NULL AND s.batch_id = $1
               AND {_values('s')} IS NOT DISTINCT FROM {_values('st')}""", batch_id) - inserted
        problems = await conn.fetch(f"""
            WITH bad AS (
                SELECT st.line, st.provider, st.external_id, s.id AS live_id, s.batch_id = $1 AS this_file
                  FROM pg_temp.finance_staging st
                  LEFT JOIN finance.settlements s
                    ON s.provider = st.provider AND s.external_id = st.external_id AND s.voided_at IS NULL
                 WHERE st.voided_id IS NULL AND (s.id IS NULL OR {_values('s')} IS DISTINCT FROM {_values('st')})
                 ORDER BY st.line LIMIT 1000),
            firsts AS (  -- one pass over the staged file for all of them (it has no index)
                SELECT f.provider, f.external_id, min(f.line) AS first_line
                  FROM pg_temp.finance_staging f
                  JOIN bad ON bad.this_file AND bad.provider = f.provider AND bad.external_id = f.external_id
                 GROUP BY f.provider, f.external_id)
            SELECT bad.*, firsts.first_line FROM bad LEFT JOIN firsts USING (provider, external_id)
             ORDER BY bad.line""", batch_id)
    await conn.execute("""
        UPDATE finance.import_batches SET received = $2::int, inserted = $3::int, already = $2::int - $3::int - $4::int,
                                          skipped_voided = $4::int
         WHERE id = $1""", batch_id, staged - repeats, inserted, skipped)
    return batch_id, inserted, skipped, repeats, problems


async def voided_repeats(conn: Connection, limit: int) -> list[asyncpg.Record]:
    """Rows of the file being imported (in this transaction) that repeat a voided settlement."""
    return await conn.fetch("""
        SELECT line, provider, external_id, voided_id FROM pg_temp.finance_staging
         WHERE voided_id IS NOT NULL ORDER BY line LIMIT $1""", limit)


async def resolve_pending_settlements(conn: Connection) -> int:
    """Settlements imported before their order existed point at it once it does."""
    status = await conn.execute(f"""
        UPDATE finance.settlements s SET order_id = r.order_id
          FROM (SELECT id, {resolve_order('order_ref')} AS order_id
                  FROM finance.settlements WHERE order_id IS NULL AND voided_at IS NULL) r
         WHERE s.id = r.id AND r.order_id IS NOT NULL""")
    return int(status.split()[-1])


SETTLEMENT_SELECT = """
    SELECT id, provider, external_id, order_ref AS order_id, order_id::text AS resolved_order_id, type, amount,
           fee, currency, settled_at, CASE WHEN voided_at IS NULL THEN 'live' ELSE 'voided' END AS status,
           voided_at, voided_by, void_reason
      FROM finance.settlements"""


async def list_settlements(pool: Pool, order_ref: str | None, status: str, after: int,
                           limit: int) -> list[asyncpg.Record]:
    """Keyset on id (unique): a page starts strictly after the last id seen."""
    return await pool.fetch(f"""{SETTLEMENT_SELECT}
         WHERE id > $1 AND ($2::text IS NULL OR order_ref = $2 OR order_id::text = $2)
           AND ($3::text = 'all' OR ($3::text = 'live') = (voided_at IS NULL))
         ORDER BY id LIMIT $4""", after, order_ref, status, limit)


async def live_settlement_exists(conn: Connection, settlement_id: int) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM finance.settlements WHERE id = $1 AND voided_at IS NULL)", settlement_id))


# --- voids ----------------------------------------------------------------------------------------------


async def lock_settlement(conn: Connection, settlement_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("""
        SELECT id, order_id, settled_at, voided_at, voided_by, void_reason
          FROM finance.settlements WHERE id = $1 FOR UPDATE""", settlement_id)


async def lock_live_settlement(conn: Connection, provider: str, external_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("""
        SELECT id, order_id, settled_at, voided_at, voided_by, void_reason
          FROM finance.settlements WHERE provider = $1 AND external_id = $2 AND voided_at IS NULL
         FOR UPDATE""", provider, external_id)


async def last_voided(conn: Connection, provider: str, external_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("""
        SELECT id, voided_at, voided_by, void_reason FROM finance.settlements
         WHERE provider = $1 AND external_id = $2 AND voided_at IS NOT NULL ORDER BY id DESC LIMIT 1""",
                               provider, external_id)


async def runs_that_may_count(conn: Connection, settlement_id: int, order_id: Any,
                              settled_at: Any) -> list[asyncpg.Record]:
    """Every run that may hold the settlement in an item or a resolution, without reading all items:
    an order's settlement is in the runs of the days the order has sales, an unexplained one in the
    runs of the day it settled (domain.Scope.covers_settlement_day), a linked one where it was linked."""
    return await conn.fetch("""
        SELECT r.id, r.committed_at FROM finance.runs r
         WHERE r.business_day IN (SELECT s.business_day FROM orders.sales s WHERE s.order_id = $2
                                  UNION SELECT ($3::timestamptz AT TIME ZONE 'UTC')::date)
            OR r.id IN (SELECT x.run_id FROM finance.resolutions x WHERE x.settlement_id = $1)
         ORDER BY r.id""", settlement_id, order_id, settled_at)


async def runs_counting(conn: Connection, settlement_id: int, run_ids: list[int]) -> list[asyncpg.Record]:
    """Of `run_ids`, those that counted the settlement, and whether each is (even partly) on the ledger."""
    return await conn.fetch("""
        SELECT r.id, r.superseded_by,
               r.committed_at IS NOT NULL
               OR EXISTS (SELECT 1 FROM finance.ledger_commits c WHERE c.run_id = r.id) AS on_ledger
          FROM finance.runs r
         WHERE r.id = ANY ($2::bigint[])
           AND (EXISTS (SELECT 1 FROM finance.run_items i WHERE i.run_id = r.id AND $1 = ANY (i.settlement_ids))
                OR EXISTS (SELECT 1 FROM finance.resolutions x WHERE x.run_id = r.id AND x.settlement_id = $1))
         ORDER BY r.id""", settlement_id, run_ids)


async def mark_voided(conn: Connection, settlement_id: int, actor: str, reason: str) -> asyncpg.Record:
    await conn.execute("""
        UPDATE finance.settlements SET voided_at = now(), voided_by = $2, void_reason = $3
         WHERE id = $1 AND voided_at IS NULL""", settlement_id, actor, reason)
    return await conn.fetchrow(f"{SETTLEMENT_SELECT} WHERE id = $1", settlement_id)


async def voided_ids(db: Pool | Connection) -> list[int]:
    return [r["id"] for r in await db.fetch("SELECT id FROM finance.settlements WHERE voided_at IS NOT NULL")]


async def voided_in_run(db: Pool | Connection, run_id: int, voided: list[int]) -> int | None:
    """A voided settlement (one of `voided`) that the run counted in an item or linked in a resolution."""
    return await db.fetchval("""
        SELECT coalesce(
            (SELECT x.settlement_id FROM finance.resolutions x
              WHERE x.run_id = $1 AND x.settlement_id = ANY ($2::bigint[]) LIMIT 1),
            (SELECT v FROM finance.run_items i CROSS JOIN LATERAL unnest(i.settlement_ids) v
              WHERE i.run_id = $1 AND i.settlement_ids && $2::bigint[] AND v = ANY ($2::bigint[]) LIMIT 1))""",
                             run_id, voided)


# --- close-outs ---------------------------------------------------------------------------------------


async def insert_closeout(conn: Connection, location_id: str, business_day: date, currency: str,
                          tenders: list[dict[str, str]], note: str | None, actor: str) -> asyncpg.Record:
    return await conn.fetchrow("""
        INSERT INTO finance.closeouts (location_id, business_day, currency, tenders, note, declared_by)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""", location_id, business_day, currency, tenders, note, actor)


async def location_exists(conn: Connection | Pool, location_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM inventory.locations WHERE id = $1)",
                                    location_id))


async def latest_closeouts(db: Connection | Pool, business_day: date,
                           location_id: str | None) -> list[asyncpg.Record]:
    return await db.fetch("""
        SELECT DISTINCT ON (location_id) *
          FROM finance.closeouts
         WHERE business_day = $1 AND ($2::text IS NULL OR location_id = $2)
         ORDER BY location_id, id DESC""", business_day, location_id)


async def closeout_page(db: Pool, business_day: date, location_id: str | None, after_location: str | None,
                        limit: int) -> list[asyncpg.Record]:
    """The declaration in force per store, keyset on location_id (one row per store, so unique)."""
    return await db.fetch("""
        SELECT DISTINCT ON (location_id) *
          FROM finance.closeouts
         WHERE business_day = $1 AND ($2::text IS NULL OR location_id = $2)
           AND ($3::text IS NULL OR location_id > $3)
         ORDER BY location_id, id DESC LIMIT $4""", business_day, location_id, after_location, limit)


# --- runs: reading what a run needs (one REPEATABLE READ snapshot) -------------------------------------

IN_SCOPE = "s.business_day = $1 AND ($2::text IS NULL OR s.channel = $2) AND ($3::text IS NULL OR s.location_id = $3)"
POSITIONS = f"""
WITH scoped AS (
    SELECT DISTINCT s.order_id FROM orders.sales s WHERE {IN_SCOPE}
), sold AS (
    SELECT s.order_id,
           min(s.channel) AS channel,
           (array_agg(s.location_id ORDER BY s.id) FILTER (WHERE {IN_SCOPE}))[1] AS location_id,
           min(s.currency) AS currency,
           bool_or(s.kind = 'till') AS paid_at_till,
           sum(s.total) FILTER (WHERE {IN_SCOPE}) AS sales_total,
           coalesce(bool_or(s.kind <> 'return') FILTER (WHERE {IN_SCOPE}), false) AS sells,
           coalesce(bool_or(s.kind = 'return') FILTER (WHERE {IN_SCOPE}), false) AS returns,
           coalesce(sum(s.total) FILTER (WHERE s.kind <> 'return'), 0) AS sold,
           coalesce(-sum(s.total) FILTER (WHERE s.kind = 'return'), 0) AS returned,
           array_agg(s.id ORDER BY s.id) FILTER (WHERE {IN_SCOPE}) AS sale_ids
      FROM orders.sales s JOIN scoped USING (order_id)
     GROUP BY s.order_id
), paid AS (
    SELECT t.order_id,
           array_agg(t.amount ORDER BY t.id) FILTER (WHERE t.type = 'capture') AS captures,
           array_agg(t.id ORDER BY t.id) FILTER (WHERE t.type = 'capture') AS capture_ids,
           array_agg(t.amount ORDER BY t.id) FILTER (WHERE t.type = 'refund') AS refunds,
           array_agg(t.id ORDER BY t.id) FILTER (WHERE t.type = 'refund') AS refund_ids,
           array_agg(DISTINCT t.currency) AS currencies
      FROM finance.settlements t JOIN scoped USING (order_id)
     WHERE t.voided_at IS NULL
     GROUP BY t.order_id
)
SELECT sold.*, paid.captures, paid.capture_ids, paid.refunds, paid.refund_ids, paid.currencies
  FROM sold LEFT JOIN paid USING (order_id)
"""


async def prepare_reader(conn: Connection) -> None:
    """A big day's aggregation sorts or hashes a million orders: let it do so in memory (this
    transaction only), rather than spilling to disk."""
    await conn.execute("SET LOCAL work_mem = '192MB'")


async def count_scope_orders(conn: Connection, scope: Scope) -> int:
    return int(await conn.fetchval(f"SELECT count(DISTINCT s.order_id) FROM orders.sales s WHERE {IN_SCOPE}",
                                   *_scope_args(scope)))


async def positions(conn: Connection, scope: Scope, prefetch: int = 20_000) -> AsyncIterator[asyncpg.Record]:
    """Per order with a sale in scope: its sales and settlements, aggregated (inside a transaction)."""
    async for row in conn.cursor(POSITIONS, *_scope_args(scope), prefetch=prefetch):
        yield row


async def stray_settlements(conn: Connection, scope: Scope) -> list[asyncpg.Record]:
    """Settlements of the day that no sale accounts for: the rule of domain.is_stray, as an anti-join."""
    if scope.location_id is not None:
        return []
    return await conn.fetch("""
        SELECT t.id, t.order_ref, t.order_id::text AS order_id, t.type, t.amount, t.fee, t.currency, t.settled_at,
               o.channel
          FROM finance.settlements t
          LEFT JOIN orders.orders o ON o.id = t.order_id
         WHERE t.voided_at IS NULL
           AND t.settled_at >= $1::date::timestamp AT TIME ZONE 'UTC'
           AND t.settled_at < ($1::date + 1)::timestamp AT TIME ZONE 'UTC'
           AND ($2::text IS NULL OR coalesce(o.channel, 'online') = $2)
           AND NOT EXISTS (SELECT 1 FROM orders.sales s
                            WHERE s.order_id = t.order_id AND (s.kind = 'return') = (t.type = 'refund'))
         ORDER BY t.id""", scope.business_day, scope.channel)


async def till_tenders(conn: Connection, scope: Scope) -> list[asyncpg.Record]:
    """What the tills took per store, currency and tender kind on the day."""
    return await conn.fetch("""
        SELECT s.location_id, s.currency, t->>'kind' AS kind, sum((t->>'amount')::numeric) AS amount
          FROM orders.sales s CROSS JOIN LATERAL jsonb_array_elements(s.tenders) t
         WHERE s.business_day = $1 AND s.kind = 'till' AND ($2::text IS NULL OR s.location_id = $2)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""", scope.business_day, scope.location_id)


async def till_returns(conn: Connection, scope: Scope) -> list[asyncpg.Record]:
    """Returns of till orders on the day, with the tenders the original sale was paid in."""
    return await conn.fetch("""
        SELECT s.location_id, s.currency, s.total, o.payment->'tenders' AS original
          FROM orders.sales s JOIN orders.orders o ON o.id = s.order_id
         WHERE s.business_day = $1 AND s.kind = 'return' AND o.fulfillment_type = 'till'
           AND ($2::text IS NULL OR s.location_id = $2)
         ORDER BY s.id""", scope.business_day, scope.location_id)


def _scope_args(scope: Scope) -> tuple[Any, ...]:
    return scope.business_day, scope.channel, scope.location_id


# --- runs: writing ---------------------------------------------------------------------------------------


async def lock_scope(conn: Connection, scope: Scope) -> None:
    """One run of a scope at a time, so that exactly one of two concurrent runs supersedes the other."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7277005))",
                       f"finance.run|{scope.business_day}|{scope.channel}|{scope.location_id}")


async def next_run_id(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT nextval('finance.run_ids')"))


async def copy_items(conn: Connection, chunks: AsyncIterable[bytes]) -> None:
    """COPY items in text format: formatting lines in Python is several times cheaper than asyncpg's
    binary encoding of numerics and arrays, and the chunks stream while the rows are still computed."""
    await conn.copy_to_table("run_items", schema_name="finance", columns=ITEM_COLUMNS, source=chunks)


def _text(value: str | None) -> str:
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _ids(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def item_line(run_id: int, item_no: int, item: Item) -> str:
    """One COPY text line of finance.run_items, columns in ITEM_COLUMNS order. It is also the item's
    canonical form: the run's Merkle root is over these lines (see domain.item_leaf)."""
    return (f"{run_id}\t{item_no}\t{item.kind}\t{item.cls}\t{_text(item.order_id)}\t{_text(item.order_ref)}\t"
            f"{_text(item.channel)}\t{_text(item.location_id)}\t{_text(item.tender)}\t{item.currency}\t"
            f"{item.sales_total:.2f}\t{item.expected:.2f}\t{item.paid:.2f}\t{item.paid - item.expected:.2f}\t"
            f"{_ids(item.sale_ids)}\t{_ids(item.settlement_ids)}\t{_text(item.note)}\n")


async def supersede(conn: Connection, scope: Scope, run_id: int) -> int | None:
    return await conn.fetchval("""
        UPDATE finance.runs SET superseded_by = $4
         WHERE business_day = $1 AND channel IS NOT DISTINCT FROM $2 AND location_id IS NOT DISTINCT FROM $3
           AND superseded_by IS NULL
        RETURNING id""", *_scope_args(scope), run_id)


async def insert_run(conn: Connection, **values: Any) -> None:
    columns = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO finance.runs ({columns}) VALUES ({params})", *values.values())


# --- runs: reading back -----------------------------------------------------------------------------------

RUN_SELECT = """
    SELECT r.*, (SELECT count(*) FROM finance.resolutions x WHERE x.run_id = r.id) AS resolved
      FROM finance.runs r"""
ITEM_SELECT = """
    SELECT i.*, x.action, x.reason, x.amount, x.settlement_id, x.resolved_by, x.resolved_at
      FROM finance.run_items i
      LEFT JOIN finance.resolutions x ON x.run_id = i.run_id AND x.item_no = i.item_no"""


async def get_run(db: Connection | Pool, run_id: int, *, lock: bool = False) -> asyncpg.Record | None:
    if lock:
        await db.fetchval("SELECT id FROM finance.runs WHERE id = $1 FOR UPDATE", run_id)
    return await db.fetchrow(f"{RUN_SELECT} WHERE r.id = $1", run_id)


async def list_runs(db: Pool, business_day: date | None, before: int | None, limit: int) -> list[asyncpg.Record]:
    """Newest first, keyset on id (unique): a page starts strictly below the last id seen."""
    return await db.fetch(f"""{RUN_SELECT}
        WHERE ($1::date IS NULL OR r.business_day = $1) AND ($2::bigint IS NULL OR r.id < $2)
        ORDER BY r.id DESC LIMIT $3""", business_day, before, limit)


async def first_items(db: Connection | Pool, run_id: int, limit: int) -> list[asyncpg.Record]:
    """Exceptions first (they are what a reader acts on), then matched items, each in item order."""
    exceptions = await db.fetch(f"{ITEM_SELECT} WHERE i.run_id = $1 AND i.class <> 'matched'"
                                " ORDER BY i.item_no LIMIT $2", run_id, limit)
    if len(exceptions) >= limit:
        return exceptions
    matched = await db.fetch(f"{ITEM_SELECT} WHERE i.run_id = $1 AND i.class = 'matched'"
                             " ORDER BY i.item_no LIMIT $2", run_id, limit - len(exceptions))
    return exceptions + matched


async def list_items(db: Pool, run_id: int, item_class: str | None, after: int, limit: int) -> list[asyncpg.Record]:
    return await db.fetch(f"""{ITEM_SELECT}
        WHERE i.run_id = $1 AND ($2::text IS NULL OR i.class = $2) AND i.item_no > $3
        ORDER BY i.item_no LIMIT $4""", run_id, item_class, after, limit)


async def get_item(conn: Connection, run_id: int, item_no: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"{ITEM_SELECT} WHERE i.run_id = $1 AND i.item_no = $2", run_id, item_no)


async def insert_resolution(conn: Connection, run_id: int, item_no: int, action: str, reason: str,
                            amount: Any, settlement_id: int | None, actor: str) -> bool:
    return bool(await conn.fetchval("""
        INSERT INTO finance.resolutions (run_id, item_no, action, reason, amount, settlement_id, resolved_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true""",
                                    run_id, item_no, action, reason, amount, settlement_id, actor))


async def mark_committed(conn: Connection, run_id: int, actor: str, override_reason: str | None) -> None:
    await conn.execute("""
        UPDATE finance.runs SET committed_at = now(), committed_by = $2, override_reason = $3,
               override_by = CASE WHEN $3::text IS NULL THEN NULL ELSE $2 END
         WHERE id = $1 AND committed_at IS NULL""", run_id, actor, override_reason)


# --- ledger commits -----------------------------------------------------------------------------------


async def lock_run_commit(conn: Connection, run_id: int) -> None:
    await conn.execute("SELECT pg_advisory_lock(7277006, $1::int)", run_id % 2**31)


async def lock_run_commit_xact(conn: Connection, run_id: int) -> None:
    """The commit lock of a run (lock_run_commit), held until this transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(7277006, $1::int)", run_id % 2**31)


async def unlock_run_commit(conn: Connection, run_id: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock(7277006, $1::int)", run_id % 2**31)


async def uncommitted_sale_items(db: Pool, run_id: int, business_day: date, after: int,
                                 limit: int) -> list[asyncpg.Record]:
    """The run's order items whose sale is not on the ledger yet (by any run of that day)."""
    return await db.fetch(f"""{ITEM_SELECT}
        WHERE i.run_id = $1 AND i.kind = 'order' AND i.item_no > $3
          AND NOT EXISTS (SELECT 1 FROM finance.ledger_commits c
                           WHERE c.entry_key = 'sale:' || i.order_id || ':' || $2::date)
        ORDER BY i.item_no LIMIT $4""", run_id, business_day, after, limit)


async def committed(db: Pool, entry_key: str) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM finance.ledger_commits WHERE entry_key = $1)",
                                  entry_key))


async def record_commits(conn: Connection, run_id: int, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    # A key already recorded was recorded by a newer run of the day that committed the same sale while
    # this commit was between the ledger's write and this one: the ledger holds each fact once, so both
    # hold the one receipt, and the first record stands.
    await conn.executemany(
        "INSERT INTO finance.ledger_commits (entry_key, run_id, kind, receipt) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (entry_key) DO NOTHING",
        [(key, run_id, kind, receipt) for key, kind, receipt in rows])


async def commit_count(db: Pool, run_id: int) -> int:
    return int(await db.fetchval("SELECT count(*) FROM finance.ledger_commits WHERE run_id = $1", run_id))


# --- reports ---------------------------------------------------------------------------------------------

GROUP_KEYS = {"day": "s.business_day::text", "channel": "s.channel", "location": "s.location_id"}


async def revenue(db: Pool, start: date, end: date, group_by: str) -> list[asyncpg.Record]:
    key = GROUP_KEYS[group_by]
    return await db.fetch(f"""
        SELECT {key} AS key, s.currency,
               count(DISTINCT s.order_id) FILTER (WHERE s.kind <> 'return') AS orders,
               coalesce(sum(s.total) FILTER (WHERE s.kind <> 'return'), 0) AS gross,
               coalesce(sum(s.total) FILTER (WHERE s.kind = 'return'), 0) AS returns,
               sum(s.total) AS revenue
          FROM orders.sales s
         WHERE s.business_day BETWEEN $1 AND $2
         GROUP BY 1, 2 ORDER BY 1, 2""", start, end)


# Revenue as the ledger records it: one figure per order and business day (its sales that day, returns
# netted), credited to the location of its first sale that day, the rule reconciliation items follow.
REVENUE_GROUPS = """
SELECT business_day, channel, location_id, currency, count(*) AS sales, sum(total) AS amount
FROM (
    SELECT s.business_day, s.order_id, min(s.channel) AS channel, min(s.currency) AS currency,
           (array_agg(s.location_id ORDER BY s.id))[1] AS location_id, sum(s.total) AS total
    FROM orders.sales s
    WHERE s.business_day BETWEEN $1 AND $2
    GROUP BY s.business_day, s.order_id
) per_order
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""


async def revenue_groups(db: Pool | Connection, date_from: date, date_to: date) -> list[asyncpg.Record]:
    return await db.fetch(REVENUE_GROUPS, date_from, date_to)


# Sales lines at a price other than the catalogue's (orders records catalogue_price and price_source
# on every line since issue 11), in (sale, line) order for keyset paging.
PRICE_OVERRIDES = """
SELECT s.id AS sale_id, ln.n::int AS line_no, s.kind, s.order_id::text AS order_id, s.channel, s.location_id,
       s.business_day, s.currency, ln.l->>'sku' AS sku, (ln.l->>'qty')::int AS qty,
       (ln.l->>'catalogue_price')::numeric AS catalogue_price, (ln.l->>'unit_price')::numeric AS unit_price,
       ln.l->>'price_source' AS price_source, ln.l->'price_override'->>'reason' AS reason,
       ln.l->'price_override'->>'by' AS set_by
  FROM orders.sales s CROSS JOIN LATERAL jsonb_array_elements(s.lines) WITH ORDINALITY AS ln(l, n)
 WHERE s.business_day BETWEEN $1 AND $2 AND ($3::text IS NULL OR s.location_id = $3)
   AND ln.l->>'price_source' = ANY ($4::text[])
   AND (s.id, ln.n) > ($5::bigint, $6::bigint)
 ORDER BY s.id, ln.n
 LIMIT $7
"""


async def price_overrides(db: Pool, date_from: date, date_to: date, location_id: str | None, sources: list[str],
                          after: tuple[int, int], limit: int) -> list[asyncpg.Record]:
    return await db.fetch(PRICE_OVERRIDES, date_from, date_to, location_id, sources, after[0], after[1], limit)
