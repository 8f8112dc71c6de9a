-- Group reservation, published for orders' group placement: the reservations of many orders in one
-- call, each order all-or-nothing, every level locked and updated once however many orders share it
-- (a flash sale's hot row is written once per group, not once per order).
--
-- Line i asks for p_qtys[i] of p_skus[i] at p_locations[i] for group p_groups[i] (one order); group g
-- has reference p_references[g] and actor p_actors[g]. Groups are taken in ascending number (arrival
-- order): a group is reserved when every one of its lines fits what is still sellable
-- (on_hand - reserved - safety_stock) after the groups reserved before it; otherwise it changes
-- nothing and is returned as (skipped, short_lines [{sku, location_id, requested, available}]).
-- So the result is exactly what calling reserve_many once per group, in that order, would give.
--
-- Every level is locked first, in the global (sku, location_id) order (as reserve_many and
-- lock_levels do), so group reservations cannot deadlock with each other or with single ones.
-- Each reserved group gets one 'reservation' movement per level and one stock.changed event per
-- movement, which shows the level as it stood right after that movement: the level still equals the
-- sum of its movements, movement by movement.
CREATE FUNCTION inventory.reserve_groups(
    p_groups int[], p_skus text[], p_locations text[], p_qtys int[], p_references text[], p_actors text[]
) RETURNS TABLE (skipped int, short_lines jsonb) LANGUAGE plpgsql AS $$
DECLARE
    lk_skus text[];
    lk_locs text[];
    avail bigint[];
    g record;
    fits boolean;
    reserved_groups int[] := '{}';
BEGIN
    SELECT coalesce(array_agg(l.sku ORDER BY l.sku, l.location_id), '{}'),
           coalesce(array_agg(l.location_id ORDER BY l.sku, l.location_id), '{}'),
           coalesce(array_agg(l.avail ORDER BY l.sku, l.location_id), '{}')
      INTO lk_skus, lk_locs, avail
      FROM (SELECT lv.sku, lv.location_id, lv.on_hand - lv.reserved - lv.safety_stock AS avail
              FROM inventory.stock_levels lv
              JOIN (SELECT DISTINCT t.sku, t.loc FROM unnest(p_skus, p_locations) AS t(sku, loc)) k
                ON lv.sku = k.sku AND lv.location_id = k.loc
             ORDER BY lv.sku, lv.location_id
               FOR UPDATE OF lv) l;

    -- Decide group by group against the locked levels (n = 0: no such level, nothing sellable).
    FOR g IN
        SELECT r.grp, array_agg(r.sku) AS skus, array_agg(r.loc) AS locs, array_agg(coalesce(k.n, 0)::int) AS ns,
               array_agg(r.qty) AS qtys
          FROM (SELECT t.grp, t.sku, t.loc, sum(t.qty)::bigint AS qty
                  FROM unnest(p_groups, p_skus, p_locations, p_qtys) AS t(grp, sku, loc, qty)
                 GROUP BY t.grp, t.sku, t.loc) r
          LEFT JOIN unnest(lk_skus, lk_locs) WITH ORDINALITY AS k(sku, loc, n) ON k.sku = r.sku AND k.loc = r.loc
         GROUP BY r.grp
         ORDER BY r.grp
    LOOP
        fits := true;
        FOR j IN 1 .. cardinality(g.ns) LOOP
            IF g.ns[j] = 0 OR avail[g.ns[j]] < g.qtys[j] THEN
                fits := false;
                EXIT;
            END IF;
        END LOOP;
        IF fits THEN
            FOR j IN 1 .. cardinality(g.ns) LOOP
                avail[g.ns[j]] := avail[g.ns[j]] - g.qtys[j];
            END LOOP;
            reserved_groups := reserved_groups || g.grp;
        ELSE
            skipped := g.grp;
            short_lines := (
                SELECT jsonb_agg(jsonb_build_object('sku', x.sku, 'location_id', x.loc, 'requested', x.qty,
                                                    'available', greatest(0, coalesce(avail[nullif(x.n, 0)], 0)))
                                 ORDER BY x.sku, x.loc)
                  FROM unnest(g.skus, g.locs, g.ns, g.qtys) AS x(sku, loc, n, qty)
                 WHERE x.n = 0 OR avail[x.n] < x.qty);
            RETURN NEXT;
        END IF;
    END LOOP;

    IF cardinality(reserved_groups) = 0 THEN
        RETURN;
    END IF;
    WITH req AS (
        SELECT t.grp, t.sku, t.loc, sum(t.qty)::bigint AS qty
          FROM unnest(p_groups, p_skus, p_locations, p_qtys) AS t(grp, sku, loc, qty)
         WHERE t.grp = ANY (reserved_groups)
         GROUP BY t.grp, t.sku, t.loc
    ), lvl AS (
        UPDATE inventory.stock_levels l
           SET reserved = l.reserved + s.qty, updated_at = now()
          FROM (SELECT req.sku, req.loc, sum(req.qty)::bigint AS qty FROM req GROUP BY req.sku, req.loc) s
         WHERE l.sku = s.sku AND l.location_id = s.loc
        RETURNING l.sku, l.location_id, l.on_hand, l.reserved - s.qty AS reserved_before, l.safety_stock
    ), steps AS (
        SELECT req.grp, req.sku, req.loc, req.qty, lvl.on_hand, lvl.safety_stock,
               lvl.reserved_before + sum(req.qty) OVER (PARTITION BY req.sku, req.loc ORDER BY req.grp) AS reserved
          FROM req JOIN lvl ON lvl.sku = req.sku AND lvl.location_id = req.loc
    ), mv AS (
        INSERT INTO inventory.stock_movements
            (sku, location_id, kind, on_hand_delta, reserved_delta, reference, reason, actor)
        SELECT s.sku, s.loc, 'reservation', 0, s.qty, p_references[s.grp], NULL, p_actors[s.grp]
          FROM steps s ORDER BY s.sku, s.loc, s.grp
        RETURNING id, sku, location_id, reference
    )
    INSERT INTO core.events (topic, key, payload)
    SELECT 'stock.changed', s.sku, jsonb_build_object(
        'sku', s.sku, 'location_id', s.loc, 'kind', 'reservation', 'movement_id', mv.id,
        'on_hand_delta', 0, 'reserved_delta', s.qty,
        'on_hand', s.on_hand, 'reserved', s.reserved, 'safety_stock', s.safety_stock,
        'available', greatest(0, s.on_hand - s.reserved - s.safety_stock),
        'reference', mv.reference)
      FROM steps s JOIN mv ON mv.sku = s.sku AND mv.location_id = s.loc AND mv.reference = p_references[s.grp]
     ORDER BY mv.id;
END $$;
