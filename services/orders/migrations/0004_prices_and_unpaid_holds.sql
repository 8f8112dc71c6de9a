-- Issue 11, "trust at the edges": prices checked against the catalogue, store orders on a clock, and a
-- cap on the units one store key holds unpaid. The placement and till functions are replaced (new
-- parameters: a function's signature is its identity, so the old ones are dropped first).

-- Each line's price as checked at placement: the catalogue's price then, where the sold price came
-- from, and an override's reason (who set it is the order's placed_by). NULL on lines placed before.
ALTER TABLE orders.order_lines
    ADD COLUMN catalogue_price numeric(14, 2),
    ADD COLUMN price_source text CHECK (price_source IN ('catalogue', 'override', 'channel')),
    ADD COLUMN price_reason text;
COMMENT ON COLUMN orders.order_lines.price_source IS
    'catalogue: the catalogue price; override: another price set by a key allowed to (price_reason says '
    'why, placed_by who); channel: an online channel''s own price (its promotions)';
COMMENT ON COLUMN orders.sales.lines IS
    '[{sku, qty, unit_price, amount, location_id, catalogue_price, price_source, price_override?: {reason, by}}]: '
    'location_id is where the stock moved; qty and amount are negative on returns';
COMMENT ON COLUMN orders.sales.discount IS
    'order-level discount; on a return, negative: the share of the order''s discount the refund keeps back';

-- Store orders now expire like online ones; orders_expiring (reserved_until) already serves the sweeper.
COMMENT ON COLUMN orders.orders.reserved_until IS
    'unpaid orders (online: reservation_ttl_s, store: store_reservation_ttl_s): the sweeper releases them after this';

-- The unpaid store orders of one key, for the cap (online orders are never counted: not indexed).
CREATE INDEX orders_unpaid_store ON orders.orders (placed_by) WHERE status = 'placed' AND channel = 'store';

-- Placements capped for one actor wait for each other here (until commit), so the count that follows
-- sees every order the previous holder placed.
CREATE FUNCTION orders.lock_unpaid(p_actor text) RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('orders.unpaid:' || p_actor, 0))
$$;

-- Units still reserved by the actor's unpaid store orders. VOLATILE: each call reads with a new
-- snapshot, so called after orders.lock_unpaid it counts what the lock's previous holder committed.
CREATE FUNCTION orders.unpaid_units(p_actor text) RETURNS int LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(sum(a.qty - a.fulfilled_qty - a.cancelled_qty), 0)::int
      FROM orders.orders o JOIN orders.allocations a ON a.order_id = o.id
     WHERE o.placed_by = p_actor AND o.status = 'placed' AND o.channel = 'store'
$$;

DROP FUNCTION orders.record_till_sale(uuid, text, text, numeric, numeric, numeric, numeric, text, text[], int[],
                                      numeric[], jsonb, jsonb, jsonb);
DROP FUNCTION orders.insert_order(uuid, text, text, text, text, text, text, float8, float8, text, numeric, numeric,
                                  numeric, numeric, numeric, timestamptz, timestamptz, jsonb, text, text[], int[],
                                  numeric[], int[], text[], int[], int[]);
DROP FUNCTION orders.place_order(uuid, text, text, text, text, text, text, float8, float8, numeric, numeric, numeric,
                                 numeric, numeric, timestamptz, text, text[], int[], numeric[], int[], text[], int[],
                                 jsonb);
DROP FUNCTION orders.place_batch(text[], text[], bytea[], boolean[], jsonb[], uuid[], text[], text[], text[], text[],
                                 text[], text[], float8[], float8[], numeric[], numeric[], numeric[], numeric[],
                                 numeric[], timestamptz[], text[], jsonb[], timestamptz, int[], int[], text[], int[],
                                 numeric[], int[], int[], text[], text[], int[]);

CREATE FUNCTION orders.insert_order(
    p_id uuid, p_channel text, p_external_id text, p_selling_location_id text, p_currency text,
    p_fulfillment_type text, p_pickup_location_id text, p_ship_to_lat float8, p_ship_to_lon float8,
    p_status text, p_lines_total numeric, p_shipping numeric, p_tax numeric, p_discount numeric, p_total numeric,
    p_reserved_until timestamptz, p_paid_at timestamptz, p_payment jsonb, p_actor text,
    p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_lines int[], p_alloc_locations text[], p_alloc_qtys int[], p_alloc_fulfilled int[],
    p_line_catalogue numeric[], p_line_sources text[], p_line_reasons text[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders.orders (id, channel, external_id, selling_location_id, currency, fulfillment_type,
        pickup_location_id, ship_to_lat, ship_to_lon, status, lines_total, shipping, tax, discount, total,
        reserved_until, paid_at, payment, charges_recognized, placed_by)
    VALUES (p_id, p_channel, p_external_id, p_selling_location_id, p_currency, p_fulfillment_type,
        p_pickup_location_id, p_ship_to_lat, p_ship_to_lon, p_status, p_lines_total, p_shipping, p_tax,
        p_discount, p_total, p_reserved_until, p_paid_at, p_payment, p_status = 'fulfilled', p_actor);
    INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price, catalogue_price, price_source,
                                    price_reason)
    SELECT p_id, n, sku, qty, price, listed, source, reason
      FROM unnest(p_line_skus, p_line_qtys, p_line_prices, p_line_catalogue, p_line_sources, p_line_reasons)
        WITH ORDINALITY AS l(sku, qty, price, listed, source, reason, n);
    INSERT INTO orders.allocations (order_id, line_no, location_id, qty, fulfilled_qty)
    SELECT p_id, line_no, loc, qty, fulfilled
      FROM unnest(p_alloc_lines, p_alloc_locations, p_alloc_qtys, p_alloc_fulfilled) AS a(line_no, loc, qty, fulfilled);
END $$;

CREATE FUNCTION orders.record_till_sale(
    p_id uuid, p_location_id text, p_currency text, p_lines_total numeric, p_tax numeric, p_discount numeric,
    p_total numeric, p_actor text, p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_sale_lines jsonb, p_tenders jsonb, p_event jsonb,
    p_line_catalogue numeric[], p_line_sources text[], p_line_reasons text[],
    OUT short jsonb, OUT sale_id bigint, OUT business_day date, OUT sold_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    locs text[] := array_fill(p_location_id, ARRAY[cardinality(p_line_skus)]);
    line_nos int[] := ARRAY(SELECT generate_series(1, cardinality(p_line_skus)));
    neg int[] := ARRAY(SELECT -q FROM unnest(p_line_qtys) WITH ORDINALITY AS t(q, i) ORDER BY i);
    zeros int[] := array_fill(0, ARRAY[cardinality(p_line_skus)]);
    sale orders.sales;
BEGIN
    short := orders.lock_and_check(p_line_skus, locs, p_line_qtys, 'sell');
    IF short IS NOT NULL THEN
        RETURN;
    END IF;
    PERFORM orders.insert_order(p_id, 'store', NULL, p_location_id, p_currency, 'till', NULL, NULL, NULL,
        'fulfilled', p_lines_total, 0, p_tax, p_discount, p_total, NULL, now(),
        jsonb_build_object('tenders', p_tenders), p_actor,
        p_line_skus, p_line_qtys, p_line_prices, line_nos, locs, p_line_qtys, p_line_qtys,
        p_line_catalogue, p_line_sources, p_line_reasons);
    PERFORM orders.move_stock(p_line_skus, locs, 'sale', neg, zeros, 'order:' || p_id, 'till sale', p_actor);
    sale := orders.record_sale('till', 'store', p_id, p_location_id, p_currency, p_sale_lines, p_lines_total, 0,
        p_tax, p_discount, p_total, p_tenders, 'order:' || p_id, p_actor);
    INSERT INTO orders.status_history (order_id, seq, event, status, actor, detail)
    VALUES (p_id, 1, 'sold', 'fulfilled', p_actor, jsonb_build_object('sale_id', sale.id));
    INSERT INTO core.events (topic, key, payload)
    VALUES ('order.fulfilled', p_id::text, p_event || jsonb_build_object('sale_id', sale.id));
    sale_id := sale.id;
    business_day := sale.business_day;
    sold_at := sale.occurred_at;
END $$;

-- As in 0001, and first: the unpaid units of a capped actor (store keys) plus this order must stay
-- within p_unpaid_cap, else `held` is set and nothing is written.
CREATE FUNCTION orders.place_order(
    p_id uuid, p_channel text, p_external_id text, p_selling_location_id text, p_currency text,
    p_fulfillment_type text, p_pickup_location_id text, p_ship_to_lat float8, p_ship_to_lon float8,
    p_lines_total numeric, p_shipping numeric, p_tax numeric, p_discount numeric, p_total numeric,
    p_reserved_until timestamptz, p_actor text,
    p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_lines int[], p_alloc_locations text[], p_alloc_qtys int[],
    p_event jsonb,
    p_unpaid_cap int, p_line_catalogue numeric[], p_line_sources text[], p_line_reasons text[],
    OUT short jsonb, OUT placed_at timestamptz, OUT held int
) LANGUAGE plpgsql AS $$
BEGIN
    IF p_unpaid_cap IS NOT NULL THEN
        PERFORM orders.lock_unpaid(p_actor);
        held := orders.unpaid_units(p_actor);  -- a new statement: sees what the lock's last holder committed
        IF held + (SELECT sum(q) FROM unnest(p_line_qtys) AS q) > p_unpaid_cap THEN
            RETURN;
        END IF;
        held := NULL;
    END IF;
    short := inventory.reserve_many(
        ARRAY(SELECT p_line_skus[n] FROM unnest(p_alloc_lines) WITH ORDINALITY AS a(n, i) ORDER BY i),
        p_alloc_locations, p_alloc_qtys, 'order:' || p_id, p_actor);
    IF short IS NOT NULL THEN
        RETURN;
    END IF;
    INSERT INTO orders.orders (id, channel, external_id, selling_location_id, currency, fulfillment_type,
        pickup_location_id, ship_to_lat, ship_to_lon, status, lines_total, shipping, tax, discount, total,
        reserved_until, placed_by)
    VALUES (p_id, p_channel, p_external_id, p_selling_location_id, p_currency, p_fulfillment_type,
        p_pickup_location_id, p_ship_to_lat, p_ship_to_lon, 'placed', p_lines_total, p_shipping, p_tax,
        p_discount, p_total, p_reserved_until, p_actor);
    INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price, catalogue_price, price_source,
                                    price_reason)
    SELECT p_id, n, sku, qty, price, listed, source, reason
      FROM unnest(p_line_skus, p_line_qtys, p_line_prices, p_line_catalogue, p_line_sources, p_line_reasons)
        WITH ORDINALITY AS l(sku, qty, price, listed, source, reason, n);
    INSERT INTO orders.allocations (order_id, line_no, location_id, qty)
    SELECT p_id, line_no, loc, qty FROM unnest(p_alloc_lines, p_alloc_locations, p_alloc_qtys) AS a(line_no, loc, qty);
    INSERT INTO orders.status_history (order_id, seq, event, status, actor) VALUES (p_id, 1, 'placed', 'placed', p_actor);
    INSERT INTO core.events (topic, key, payload) VALUES ('order.placed', p_id::text, p_event);
    placed_at := now();
END $$;

-- As in 0002, with prices per line and the unpaid-units cap (step 2b).
CREATE FUNCTION orders.place_batch(
    p_scopes text[], p_keys text[], p_hashes bytea[], p_ready boolean[], p_responses jsonb[],
    p_ids uuid[], p_channels text[], p_external_ids text[], p_selling text[], p_currencies text[],
    p_fulfillment_types text[], p_pickups text[], p_lats float8[], p_lons float8[],
    p_lines_totals numeric[], p_shipping numeric[], p_tax numeric[], p_discount numeric[], p_totals numeric[],
    p_reserved_until timestamptz[], p_actors text[], p_events jsonb[], p_placed_at timestamptz,
    p_line_orders int[], p_line_nos int[], p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_orders int[], p_alloc_lines int[], p_alloc_skus text[], p_alloc_locations text[], p_alloc_qtys int[],
    p_unpaid_caps int[], p_line_catalogue numeric[], p_line_sources text[], p_line_reasons text[]
) RETURNS TABLE (idx int, outcome text, stored_status int, stored_response jsonb, short_lines jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    claimed int[];
    to_place int[];
    placed int[];
    r record;
    g_groups int[];
    g_skus text[];
    g_locs text[];
    g_qtys int[];
    capped int[];
    over int[] := '{}';
    cap_actor text;
    held_actors text[] := '{}';
    held_units int[] := '{}';
    k int;
BEGIN
    -- 1. Claim every key. A claim that meets another transaction's uncommitted claim waits for it.
    WITH c AS (
        INSERT INTO core.idempotency_keys AS k (scope, key, request_hash, status, response)
        SELECT t.scope, t.key, t.hash, CASE WHEN t.ready THEN 201 END, CASE WHEN t.ready THEN t.resp END
          FROM unnest(p_scopes, p_keys, p_hashes, p_ready, p_responses) AS t(scope, key, hash, ready, resp)
         ORDER BY t.scope, t.key
        ON CONFLICT (scope, key) DO NOTHING
        RETURNING k.scope, k.key
    )
    SELECT coalesce(array_agg(t.n::int), '{}') INTO claimed
      FROM c JOIN unnest(p_scopes, p_keys) WITH ORDINALITY AS t(scope, key, n) ON t.scope = c.scope AND t.key = c.key;

    -- 2. Keys used before. This is a new statement of a volatile function, so it has a new snapshot
    -- and sees the committed claim that made ours a conflict.
    RETURN QUERY
        SELECT t.n::int,
               CASE WHEN k.request_hash IS NULL THEN 'retry' WHEN k.request_hash = t.hash THEN 'replayed'
                    ELSE 'conflict' END,
               CASE WHEN k.request_hash = t.hash THEN k.status END,
               CASE WHEN k.request_hash = t.hash THEN k.response END,
               NULL::jsonb
          FROM unnest(p_scopes, p_keys, p_hashes) WITH ORDINALITY AS t(scope, key, hash, n)
          LEFT JOIN core.idempotency_keys k ON k.scope = t.scope AND k.key = t.key
         WHERE NOT t.n::int = ANY (claimed);

    -- 2b. Units held unpaid per capped actor (store keys): the actors' locks are taken in actor order,
    -- after every claim and before any stock level; then each capped order, in arrival order, must fit
    -- beside what its actor already holds and its orders before it in this group ('over_cap' if not:
    -- short_lines carries {held, limit, requested}). A capped order that later comes back short has
    -- counted for those after it: the group refuses too much, never too little.
    capped := ARRAY(SELECT t.n::int FROM unnest(p_ready, p_unpaid_caps) WITH ORDINALITY AS t(ready, cap, n)
                     WHERE t.ready AND t.cap IS NOT NULL AND t.n::int = ANY (claimed) ORDER BY t.n);
    IF cardinality(capped) > 0 THEN
        FOR cap_actor IN SELECT DISTINCT p_actors[n] FROM unnest(capped) AS n ORDER BY 1 LOOP
            PERFORM orders.lock_unpaid(cap_actor);
        END LOOP;
        FOR r IN SELECT c.n, p_actors[c.n] AS actor, p_unpaid_caps[c.n] AS cap,
                        (SELECT sum(l.q)::int FROM unnest(p_line_orders, p_line_qtys) AS l(o, q) WHERE l.o = c.n) AS units
                   FROM unnest(capped) AS c(n) ORDER BY c.n
        LOOP
            k := array_position(held_actors, r.actor);
            IF k IS NULL THEN
                held_actors := held_actors || r.actor;
                held_units := held_units || orders.unpaid_units(r.actor);
                k := cardinality(held_actors);
            END IF;
            IF held_units[k] + r.units > r.cap THEN
                over := over || r.n;
                idx := r.n;
                outcome := 'over_cap';
                stored_status := NULL;
                stored_response := NULL;
                short_lines := jsonb_build_object('held', held_units[k], 'limit', r.cap, 'requested', r.units);
                RETURN NEXT;
            ELSE
                held_units[k] := held_units[k] + r.units;
            END IF;
        END LOOP;
    END IF;

    -- 3. Reserve for the claimed, ready orders, in arrival order; those that no longer fit come back short.
    to_place := ARRAY(SELECT t.n::int FROM unnest(p_ready) WITH ORDINALITY AS t(ready, n)
                       WHERE t.ready AND t.n::int = ANY (claimed) AND NOT t.n::int = ANY (over) ORDER BY t.n);
    placed := to_place;
    IF cardinality(to_place) > 0 THEN
        SELECT array_agg(a.o ORDER BY a.i), array_agg(a.sku ORDER BY a.i), array_agg(a.loc ORDER BY a.i),
               array_agg(a.qty ORDER BY a.i)
          INTO g_groups, g_skus, g_locs, g_qtys
          FROM unnest(p_alloc_orders, p_alloc_skus, p_alloc_locations, p_alloc_qtys) WITH ORDINALITY
               AS a(o, sku, loc, qty, i)
         WHERE a.o = ANY (to_place);
        FOR r IN SELECT * FROM inventory.reserve_groups(
                     g_groups, g_skus, g_locs, g_qtys, ARRAY(SELECT 'order:' || id FROM unnest(p_ids) AS id), p_actors)
        LOOP
            placed := array_remove(placed, r.skipped);
            idx := r.skipped;
            outcome := 'short';
            stored_status := NULL;
            stored_response := NULL;
            short_lines := r.short_lines;
            RETURN NEXT;
        END LOOP;
    END IF;

    -- 4. Write the placed orders.
    IF cardinality(placed) > 0 THEN
        INSERT INTO orders.orders (id, channel, external_id, selling_location_id, currency, fulfillment_type,
            pickup_location_id, ship_to_lat, ship_to_lon, status, lines_total, shipping, tax, discount, total,
            reserved_until, placed_by, created_at, updated_at)
        SELECT o.id, o.channel, o.external_id, o.selling, o.currency, o.ful, o.pickup, o.lat, o.lon, 'placed',
               o.lines_total, o.shipping, o.tax, o.discount, o.total, o.reserved_until, o.actor,
               p_placed_at, p_placed_at
          FROM unnest(p_ids, p_channels, p_external_ids, p_selling, p_currencies, p_fulfillment_types, p_pickups,
                      p_lats, p_lons, p_lines_totals, p_shipping, p_tax, p_discount, p_totals, p_reserved_until,
                      p_actors) WITH ORDINALITY
               AS o(id, channel, external_id, selling, currency, ful, pickup, lat, lon, lines_total, shipping, tax,
                    discount, total, reserved_until, actor, n)
         WHERE o.n::int = ANY (placed)
         ORDER BY o.n;
        INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price, catalogue_price, price_source,
                                        price_reason)
        SELECT p_ids[l.o], l.line_no, l.sku, l.qty, l.price, l.listed, l.source, l.reason
          FROM unnest(p_line_orders, p_line_nos, p_line_skus, p_line_qtys, p_line_prices, p_line_catalogue,
                      p_line_sources, p_line_reasons) AS l(o, line_no, sku, qty, price, listed, source, reason)
         WHERE l.o = ANY (placed);
        INSERT INTO orders.allocations (order_id, line_no, location_id, qty)
        SELECT p_ids[a.o], a.line_no, a.loc, a.qty
          FROM unnest(p_alloc_orders, p_alloc_lines, p_alloc_locations, p_alloc_qtys) AS a(o, line_no, loc, qty)
         WHERE a.o = ANY (placed);
        INSERT INTO orders.status_history (order_id, seq, event, status, actor, at)
        SELECT p_ids[n], 1, 'placed', 'placed', p_actors[n], p_placed_at FROM unnest(placed) AS n;
        INSERT INTO core.events (topic, key, payload)
        SELECT 'order.placed', p_ids[n]::text, p_events[n] FROM unnest(placed) AS n ORDER BY n;
    END IF;

    -- 5. Claims of orders not placed are withdrawn, as a rollback would have withdrawn them.
    IF cardinality(claimed) > cardinality(placed) THEN
        DELETE FROM core.idempotency_keys k
         USING unnest(p_scopes, p_keys) WITH ORDINALITY AS t(scope, key, n)
         WHERE k.scope = t.scope AND k.key = t.key AND t.n::int = ANY (claimed) AND NOT t.n::int = ANY (placed);
    END IF;

    RETURN QUERY
        SELECT n, 'placed', NULL::int, NULL::jsonb, NULL::jsonb FROM unnest(placed) AS n
        UNION ALL
        SELECT n, 'free', NULL::int, NULL::jsonb, NULL::jsonb FROM unnest(claimed) AS n WHERE NOT p_ready[n];
END $$;

-- See 0003.
ALTER FUNCTION orders.place_batch SET plan_cache_mode = force_generic_plan;
