-- apply_movement names an unknown SKU or location (SQLSTATE OS404, DETAIL = the field) when the level
-- does not exist yet, so the movement path needs no existence query of its own before the change.
CREATE OR REPLACE FUNCTION inventory.apply_movement(
    p_sku text, p_location_id text, p_kind text, p_on_hand_delta bigint, p_reserved_delta bigint,
    p_reference text DEFAULT NULL, p_reason text DEFAULT NULL, p_actor text DEFAULT NULL,
    OUT on_hand bigint, OUT reserved bigint, OUT safety_stock bigint, OUT available bigint, OUT movement_id bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    lvl inventory.stock_levels;
BEGIN
    UPDATE inventory.stock_levels
       SET on_hand = on_hand + p_on_hand_delta,
           reserved = reserved + p_reserved_delta,
           updated_at = now()
     WHERE sku = p_sku AND location_id = p_location_id
       AND reserved + p_reserved_delta >= 0
       AND reserved + p_reserved_delta <= on_hand + p_on_hand_delta
    RETURNING * INTO lvl;
    IF NOT FOUND THEN
        PERFORM 1 FROM inventory.stock_levels WHERE sku = p_sku AND location_id = p_location_id;
        IF FOUND THEN
            RAISE EXCEPTION 'insufficient stock of % at %', p_sku, p_location_id
                USING ERRCODE = 'OS409', DETAIL = p_sku, HINT = p_location_id;
        END IF;
        -- No level yet: name an unknown reference rather than "insufficient" (callers skip a separate
        -- existence query on the hot path and rely on this).
        PERFORM 1 FROM inventory.skus WHERE sku = p_sku;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown sku %', p_sku USING ERRCODE = 'OS404', DETAIL = 'sku', HINT = p_sku;
        END IF;
        PERFORM 1 FROM inventory.locations WHERE id = p_location_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown location %', p_location_id
                USING ERRCODE = 'OS404', DETAIL = 'location_id', HINT = p_location_id;
        END IF;
        IF p_on_hand_delta < 0 OR p_reserved_delta < 0 OR p_reserved_delta > p_on_hand_delta THEN
            RAISE EXCEPTION 'insufficient stock of % at %', p_sku, p_location_id
                USING ERRCODE = 'OS409', DETAIL = p_sku, HINT = p_location_id;
        END IF;
        INSERT INTO inventory.stock_levels (sku, location_id, on_hand, reserved)
        VALUES (p_sku, p_location_id, p_on_hand_delta, p_reserved_delta)
        RETURNING * INTO lvl;
    END IF;
    INSERT INTO inventory.stock_movements
        (sku, location_id, kind, on_hand_delta, reserved_delta, reference, reason, actor)
    VALUES (p_sku, p_location_id, p_kind, p_on_hand_delta, p_reserved_delta, p_reference, p_reason, p_actor)
    RETURNING id INTO movement_id;
    INSERT INTO core.events (topic, key, payload)
    VALUES ('stock.changed', p_sku, jsonb_build_object(
        'sku', p_sku, 'location_id', p_location_id, 'kind', p_kind, 'movement_id', movement_id,
        'on_hand_delta', p_on_hand_delta, 'reserved_delta', p_reserved_delta,
        'on_hand', lvl.on_hand, 'reserved', lvl.reserved, 'safety_stock', lvl.safety_stock,
        'available', greatest(0, lvl.on_hand - lvl.reserved - lvl.safety_stock),
        'reference', p_reference));
    on_hand := lvl.on_hand;
    reserved := lvl.reserved;
    safety_stock := lvl.safety_stock;
    available := greatest(0, lvl.on_hand - lvl.reserved - lvl.safety_stock);
END $$;
