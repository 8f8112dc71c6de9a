-- inventory.reserve_groups (0003), same contract, cheaper:
-- * generic plans: it runs the same statements for every group, with arrays of different lengths;
--   planning them anew per call (custom plans) cost about a third of a one-order group's time, and
--   every access is by primary key, so the generic plans are as good;
-- * movement ids are drawn in (sku, location, group) order before the insert, so each event takes
--   its movement id without joining the inserted movements back (that join grew with the square of
--   the group's lines).
CREATE OR REPLACE FUNCTION inventory.reserve_groups(
    p_groups int[], p_skus text[], p_locations text[], p_qtys int[], p_references text[], p_actors text[]
) RETURNS TABLE (skipped int, short_lines jsonb) LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
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
        -- movement ids drawn here, in (sku, location, group) order, so the events need no join back
        SELECT nextval('inventory.stock_movements_id_seq') AS movement_id, x.*
          FROM (SELECT req.grp, req.sku, req.loc, req.qty, lvl.on_hand, lvl.safety_stock,
                       lvl.reserved_before + sum(req.qty) OVER (PARTITION BY req.sku, req.loc ORDER BY req.grp)
                           AS reserved
                  FROM req JOIN lvl ON lvl.sku = req.sku AND lvl.location_id = req.loc
                 ORDER BY req.sku, req.loc, req.grp) x
    ), mv AS (
        INSERT INTO inventory.stock_movements
            (id, sku, location_id, kind, on_hand_delta, reserved_delta, reference, reason, actor)
        SELECT s.movement_id, s.sku, s.loc, 'reservation', 0, s.qty, p_references[s.grp], NULL, p_actors[s.grp]
          FROM steps s
    )
    INSERT INTO core.events (topic, key, payload)
    SELECT 'stock.changed', s.sku, jsonb_build_object(
        'sku', s.sku, 'location_id', s.loc, 'kind', 'reservation', 'movement_id', s.movement_id,
        'on_hand_delta', 0, 'reserved_delta', s.qty,
        'on_hand', s.on_hand, 'reserved', s.reserved, 'safety_stock', s.safety_stock,
        'available', greatest(0, s.on_hand - s.reserved - s.safety_stock),
        'reference', p_references[s.grp])
      FROM steps s
     ORDER BY s.movement_id;
END $$;
