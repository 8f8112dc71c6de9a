-- Locations, SKUs, stock levels and their append-only movements.
CREATE SCHEMA IF NOT EXISTS inventory;

CREATE TABLE inventory.locations (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind        text NOT NULL CHECK (kind IN ('store', 'warehouse', 'dc')),
    lat         double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    lon         double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    ship        boolean NOT NULL,
    pickup      boolean NOT NULL,
    timezone    text NOT NULL DEFAULT 'UTC',
    priority    int NOT NULL DEFAULT 100,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The nearby search narrows by a bounding box on latitude first.
CREATE INDEX locations_lat ON inventory.locations (lat, lon);

CREATE TABLE inventory.skus (
    sku         text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 300),
    price       numeric(14, 2) NOT NULL CHECK (price >= 0),
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The invariant lives here, not in application code: no code path can oversell.
CREATE TABLE inventory.stock_levels (
    sku           text NOT NULL REFERENCES inventory.skus (sku),
    location_id   text NOT NULL REFERENCES inventory.locations (id),
    on_hand       bigint NOT NULL DEFAULT 0,
    reserved      bigint NOT NULL DEFAULT 0,
    safety_stock  bigint NOT NULL DEFAULT 0 CHECK (safety_stock >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, location_id),
    CONSTRAINT stock_within_bounds CHECK (reserved >= 0 AND reserved <= on_hand)
) WITH (fillfactor = 80);  -- room for HOT updates: stock rows change constantly
CREATE INDEX stock_levels_location ON inventory.stock_levels (location_id);

CREATE TABLE inventory.stock_movements (
    id              bigserial PRIMARY KEY,
    sku             text NOT NULL,
    location_id     text NOT NULL,
    kind            text NOT NULL CHECK (kind IN
                      ('receipt', 'adjustment', 'count', 'transfer', 'reservation', 'release', 'sale', 'return')),
    on_hand_delta   bigint NOT NULL,
    reserved_delta  bigint NOT NULL,
    reference       text,
    reason          text,
    actor           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (sku, location_id) REFERENCES inventory.stock_levels (sku, location_id)
);
CREATE INDEX stock_movements_level ON inventory.stock_movements (sku, location_id);

CREATE FUNCTION inventory.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory.stock_movements is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER stock_movements_append_only BEFORE UPDATE OR DELETE ON inventory.stock_movements
    FOR EACH ROW EXECUTE FUNCTION inventory.refuse_change();
CREATE TRIGGER stock_movements_no_truncate BEFORE TRUNCATE ON inventory.stock_movements
    FOR EACH STATEMENT EXECUTE FUNCTION inventory.refuse_change();

CREATE FUNCTION inventory.distance_km(lat1 float8, lon1 float8, lat2 float8, lon2 float8)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Haversine on a sphere of the mean Earth radius; domain.great_circle_km is the same formula.
    SELECT 2 * 6371.0088 * asin(least(1.0, sqrt(
        sin(radians(lat2 - lat1) / 2) ^ 2
        + cos(radians(lat1)) * cos(radians(lat2)) * sin(radians(lon2 - lon1) / 2) ^ 2)))
$$;

-- The one way stock changes, published for other services (orders reserves and sells through it).
-- Callers must already hold the row locks they need in (sku, location_id) order when they change
-- several rows in one transaction. Raises SQLSTATE 'OS409' when the change would break the invariant
-- (checked in the UPDATE's WHERE, so no subtransaction is needed to turn a CHECK failure into an error).
CREATE FUNCTION inventory.apply_movement(
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
        IF FOUND OR p_on_hand_delta < 0 OR p_reserved_delta < 0 OR p_reserved_delta > p_on_hand_delta THEN
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

-- Row locks for several levels at once, always in (sku, location_id) order, creating missing rows
-- (also in that order) so that two transactions touching the same rows can never deadlock.
CREATE FUNCTION inventory.lock_levels(p_skus text[], p_location_ids text[])
RETURNS SETOF inventory.stock_levels LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inventory.stock_levels (sku, location_id)
    SELECT s, l FROM unnest(p_skus, p_location_ids) AS t(s, l) ORDER BY s, l
    ON CONFLICT (sku, location_id) DO NOTHING;
    RETURN QUERY
        SELECT lv.* FROM inventory.stock_levels lv
        JOIN unnest(p_skus, p_location_ids) AS t(s, l) ON lv.sku = t.s AND lv.location_id = t.l
        ORDER BY lv.sku, lv.location_id
        FOR UPDATE OF lv;
END $$;
