-- Group placement: the orders gathered by the service in one moment, placed in one statement (one
-- transaction, one commit). Each order keeps everything the one-by-one path promises: its
-- Idempotency-Key claimed in the same transaction as its rows, all-or-nothing reservation, its
-- order.placed and stock.changed events in the same transaction.
--
-- Per order n (arrays indexed by n, in arrival order): p_scopes/p_keys/p_hashes identify its claim;
-- p_ready[n] says it has allocations (false: the service already knows the answer is an error, it only
-- needs to know whether the key was used before); p_responses[n] is its 201 body, stored with the
-- claim and kept only if the order is placed. Lines and allocations are flat arrays naming their
-- order by n. Orders' rows are written with p_placed_at (the same instant the service put in the
-- bodies).
--
-- Returns one row per order: outcome 'placed'; 'replayed' (the key was used with this body before:
-- stored_status, stored_response); 'conflict' (used with another body); 'free' (claimed, not ready:
-- the service answers with its error, nothing is kept); 'short' (the stock went between the
-- service's read and the lock: short_lines, nothing kept; the service sources it again); 'retry' (the
-- key's row vanished between the claim and the read; try again).
--
-- Lock order, as everywhere: idempotency keys (here in (scope, key) order), then stock levels in
-- (sku, location) order (inventory.reserve_groups). Orders that are not placed release their claim
-- by deleting it in this transaction, so a copy waiting on the key proceeds as after a rollback.
CREATE FUNCTION orders.place_batch(
    p_scopes text[], p_keys text[], p_hashes bytea[], p_ready boolean[], p_responses jsonb[],
    p_ids uuid[], p_channels text[], p_external_ids text[], p_selling text[], p_currencies text[],
    p_fulfillment_types text[], p_pickups text[], p_lats float8[], p_lons float8[],
    p_lines_totals numeric[], p_shipping numeric[], p_tax numeric[], p_discount numeric[], p_totals numeric[],
    p_reserved_until timestamptz[], p_actors text[], p_events jsonb[], p_placed_at timestamptz,
    p_line_orders int[], p_line_nos int[], p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_orders int[], p_alloc_lines int[], p_alloc_skus text[], p_alloc_locations text[], p_alloc_qtys int[]
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

    -- 3. Reserve for the claimed, ready orders, in arrival order; those that no longer fit come back short.
    to_place := ARRAY(SELECT t.n::int FROM unnest(p_ready) WITH ORDINALITY AS t(ready, n)
                       WHERE t.ready AND t.n::int = ANY (claimed) ORDER BY t.n);
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
        INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price)
        SELECT p_ids[l.o], l.line_no, l.sku, l.qty, l.price
          FROM unnest(p_line_orders, p_line_nos, p_line_skus, p_line_qtys, p_line_prices) AS l(o, line_no, sku, qty, price)
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
