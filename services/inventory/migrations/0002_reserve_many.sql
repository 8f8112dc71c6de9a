-- Set-based reservation, published for orders: reserve qty[i] of sku[i] at location[i] for many
-- lines in one statement each for the levels, the movements and the events, instead of one
-- apply_movement call (three statements) per line. Same effects as apply_movement(kind 'reservation').
--
-- Reserves only what is sellable (on_hand - reserved - safety_stock >= qty) and is all-or-nothing:
-- returns NULL when every line was reserved, or the short lines [{sku, location_id, requested,
-- available}] with nothing changed. The levels are locked in the global (sku, location_id) order first,
-- so concurrent multi-line reservations cannot deadlock. The lock-and-check runs in a subtransaction
-- (the BEGIN ... EXCEPTION block): when something is short, leaving it by an exception releases the
-- row locks, so the caller may source again without holding rows out of order.
CREATE FUNCTION inventory.reserve_many(
    p_skus text[], p_locations text[], p_qtys int[], p_reference text, p_actor text
) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    short jsonb;
BEGIN
    BEGIN
        SELECT jsonb_agg(jsonb_build_object('sku', a.sku, 'location_id', a.loc, 'requested', a.qty,
                                            'available', greatest(0, coalesce(lv.avail, 0)))
                         ORDER BY a.sku, a.loc)
          INTO short
          FROM (SELECT sku, loc, sum(qty) AS qty FROM unnest(p_skus, p_locations, p_qtys) AS t(sku, loc, qty)
                 GROUP BY sku, loc) AS a
          LEFT JOIN (
              SELECT l.sku, l.location_id, l.on_hand - l.reserved - l.safety_stock AS avail
                FROM inventory.stock_levels l
                JOIN unnest(p_skus, p_locations) AS k(sku, loc) ON l.sku = k.sku AND l.location_id = k.loc
               ORDER BY l.sku, l.location_id
                 FOR UPDATE OF l
          ) lv ON lv.sku = a.sku AND lv.location_id = a.loc
         WHERE coalesce(lv.avail, 0) < a.qty;
        IF short IS NOT NULL THEN
            RAISE EXCEPTION 'short' USING ERRCODE = 'OS410';
        END IF;
    EXCEPTION WHEN SQLSTATE 'OS410' THEN
        RETURN short;
    END;

    WITH req AS (
        SELECT sku, loc, sum(qty)::bigint AS qty FROM unnest(p_skus, p_locations, p_qtys) AS t(sku, loc, qty)
        GROUP BY sku, loc
    ), lvl AS (
        UPDATE inventory.stock_levels l
           SET reserved = l.reserved + req.qty, updated_at = now()
          FROM req
         WHERE l.sku = req.sku AND l.location_id = req.loc
        RETURNING l.sku, l.location_id, l.on_hand, l.reserved, l.safety_stock, req.qty
    ), mv AS (
        INSERT INTO inventory.stock_movements
            (sku, location_id, kind, on_hand_delta, reserved_delta, reference, reason, actor)
        SELECT sku, location_id, 'reservation', 0, qty, p_reference, NULL, p_actor FROM lvl
        RETURNING id, sku, location_id
    )
    INSERT INTO core.events (topic, key, payload)
    SELECT 'stock.changed', lvl.sku, jsonb_build_object(
        'sku', lvl.sku, 'location_id', lvl.location_id, 'kind', 'reservation', 'movement_id', mv.id,
        'on_hand_delta', 0, 'reserved_delta', lvl.qty,
        'on_hand', lvl.on_hand, 'reserved', lvl.reserved, 'safety_stock', lvl.safety_stock,
        'available', greatest(0, lvl.on_hand - lvl.reserved - lvl.safety_stock),
        'reference', p_reference)
      FROM lvl JOIN mv ON mv.sku = lvl.sku AND mv.location_id = lvl.location_id
     ORDER BY lvl.sku, lvl.location_id;
    RETURN NULL;
END $$;
