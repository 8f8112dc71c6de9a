-- Orders from every channel, their allocations to locations, status history, and the sales records
-- finance reconciles. Stock is never written here directly: only through inventory.lock_levels and
-- inventory.apply_movement, which keep the level equal to the sum of its movements.
CREATE SCHEMA IF NOT EXISTS orders;

-- No foreign keys into inventory: a key check takes a KEY SHARE lock on the referenced location row,
-- and thousands of orders a second sharing one pickup store would pile multixacts on that row.
-- The use cases check references before writing.
CREATE TABLE orders.orders (
    id                   uuid PRIMARY KEY,
    channel              text NOT NULL CHECK (channel IN ('online', 'store')),
    external_id          text,
    selling_location_id  text,           -- channel 'store': the store that sold it
    currency             char(3) NOT NULL,
    fulfillment_type     text NOT NULL CHECK (fulfillment_type IN ('ship', 'pickup', 'till')),
    pickup_location_id   text,
    ship_to_lat          double precision,
    ship_to_lon          double precision,
    status               text NOT NULL CHECK (status IN ('placed', 'paid', 'fulfilled', 'completed', 'cancelled')),
    lines_total          numeric(14, 2) NOT NULL,
    shipping             numeric(14, 2) NOT NULL DEFAULT 0 CHECK (shipping >= 0),
    tax                  numeric(14, 2) NOT NULL DEFAULT 0 CHECK (tax >= 0),
    discount             numeric(14, 2) NOT NULL DEFAULT 0 CHECK (discount >= 0),
    total                numeric(14, 2) NOT NULL CHECK (total >= 0),
    reserved_until       timestamptz,    -- unpaid online orders: the sweeper releases them after this
    paid_at              timestamptz,
    payment              jsonb,
    charges_recognized   boolean NOT NULL DEFAULT false,  -- shipping/tax/discount already in a sale
    placed_by            text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (total = lines_total + shipping + tax - discount),
    CHECK ((channel = 'store') = (selling_location_id IS NOT NULL)),
    CHECK ((fulfillment_type = 'pickup') = (pickup_location_id IS NOT NULL))
);
CREATE UNIQUE INDEX orders_external_id ON orders.orders (channel, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX orders_expiring ON orders.orders (reserved_until) WHERE reserved_until IS NOT NULL;
CREATE INDEX orders_created ON orders.orders (created_at);

CREATE TABLE orders.order_lines (
    order_id      uuid NOT NULL REFERENCES orders.orders (id),
    line_no       int NOT NULL,
    sku           text NOT NULL,
    qty           int NOT NULL CHECK (qty > 0),
    unit_price    numeric(14, 2) NOT NULL CHECK (unit_price >= 0),
    returned_qty  int NOT NULL DEFAULT 0 CHECK (returned_qty >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- Where each line's units are reserved. open = qty - fulfilled_qty - cancelled_qty is what the
-- allocation still holds reserved at its location.
CREATE TABLE orders.allocations (
    order_id       uuid NOT NULL,
    line_no        int NOT NULL,
    location_id    text NOT NULL,
    qty            int NOT NULL CHECK (qty > 0),
    fulfilled_qty  int NOT NULL DEFAULT 0 CHECK (fulfilled_qty >= 0),
    cancelled_qty  int NOT NULL DEFAULT 0 CHECK (cancelled_qty >= 0),
    PRIMARY KEY (order_id, line_no, location_id),
    FOREIGN KEY (order_id, line_no) REFERENCES orders.order_lines (order_id, line_no),
    CHECK (fulfilled_qty + cancelled_qty <= qty)
);

CREATE TABLE orders.status_history (
    order_id  uuid NOT NULL REFERENCES orders.orders (id),
    seq       int NOT NULL,
    event     text NOT NULL,   -- placed, paid, partially_fulfilled, fulfilled, partially_cancelled,
                               -- cancelled, expired, completed, returned, sold (till)
    status    text NOT NULL,   -- the order's status after the event
    actor     text NOT NULL,
    detail    jsonb,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);

-- What finance reconciles: one row per recognised sale or return, written in the same transaction
-- as the stock movement it accounts for.
CREATE TABLE orders.sales (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('fulfillment', 'till', 'return')),
    channel       text NOT NULL CHECK (channel IN ('online', 'store')),
    order_id      uuid NOT NULL REFERENCES orders.orders (id),
    location_id   text NOT NULL,
    business_day  date NOT NULL,
    currency      char(3) NOT NULL,
    lines         jsonb NOT NULL,
    goods_amount  numeric(14, 2) NOT NULL,
    shipping      numeric(14, 2) NOT NULL DEFAULT 0,
    tax           numeric(14, 2) NOT NULL DEFAULT 0,
    discount      numeric(14, 2) NOT NULL DEFAULT 0,
    total         numeric(14, 2) NOT NULL,
    tenders       jsonb,
    reference     text NOT NULL,
    actor         text NOT NULL,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (total = goods_amount + shipping + tax - discount),
    CHECK (kind <> 'return' OR (total <= 0 AND goods_amount <= 0))
);
CREATE INDEX sales_business_day ON orders.sales (business_day, channel, location_id);
CREATE INDEX sales_order ON orders.sales (order_id);

COMMENT ON TABLE orders.sales IS
    'Recognised sales: one row per fulfilment (per credited location), till sale or return; amounts and '
    'quantities are signed (returns negative), so sum(total) over a day is the net revenue of that day.';
COMMENT ON COLUMN orders.sales.kind IS
    'fulfillment: an order shipped or picked up; till: a POS sale; return: goods taken back (negative)';
COMMENT ON COLUMN orders.sales.location_id IS
    'The location the sale counts for: the selling store for channel store (endless aisle included), '
    'the shipping/pickup location for channel online, the receiving location for a return';
COMMENT ON COLUMN orders.sales.business_day IS 'occurred_at as a date in the time zone of location_id';
COMMENT ON COLUMN orders.sales.lines IS
    '[{sku, qty, unit_price, amount, location_id}]: location_id is where the stock moved; qty and amount are '
    'negative on returns';
COMMENT ON COLUMN orders.sales.goods_amount IS 'sum of lines[].amount';
COMMENT ON COLUMN orders.sales.shipping IS
    'order-level charges are recognised in full with the order''s first fulfilment sale; 0 on later ones '
    'and on returns (only goods are refunded)';
COMMENT ON COLUMN orders.sales.total IS 'goods_amount + shipping + tax - discount';
COMMENT ON COLUMN orders.sales.tenders IS 'till sales: [{kind, amount}] summing to total; null otherwise';
COMMENT ON COLUMN orders.sales.reference IS 'the order, fulfilment or return this row accounts for';


-- Lock the levels (sku[i], location[i]) in the global order and check that each can give qty[i]:
-- mode 'reserve' needs on_hand - reserved - safety_stock >= qty (what is sellable), mode 'sell'
-- needs on_hand - reserved >= qty (goods in the customer's hands at the till, safety stock included).
-- Returns NULL with the locks held, or the short items with the locks released: the block is a
-- subtransaction, and leaving it by an exception drops the row locks it took, so the caller may
-- source again without ever holding rows out of order (which is what makes deadlocks impossible).
CREATE FUNCTION orders.lock_and_check(p_skus text[], p_locations text[], p_qtys int[], p_mode text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    short jsonb;
BEGIN
    BEGIN
        SELECT jsonb_agg(jsonb_build_object(
                   'sku', a.sku, 'location_id', a.loc, 'requested', a.qty,
                   'available', greatest(0, coalesce(
                       lv.on_hand - lv.reserved - CASE WHEN p_mode = 'reserve' THEN lv.safety_stock ELSE 0 END, 0)))
                   ORDER BY a.sku, a.loc)
          INTO short
          FROM unnest(p_skus, p_locations, p_qtys) AS a(sku, loc, qty)
          LEFT JOIN inventory.lock_levels(p_skus, p_locations) AS lv
            ON lv.sku = a.sku AND lv.location_id = a.loc
         WHERE coalesce(lv.on_hand - lv.reserved - CASE WHEN p_mode = 'reserve' THEN lv.safety_stock ELSE 0 END, 0)
               < a.qty;
        IF short IS NOT NULL THEN
            RAISE EXCEPTION 'short' USING ERRCODE = 'OS410';
        END IF;
    EXCEPTION WHEN SQLSTATE 'OS410' THEN
        RETURN short;
    END;
    RETURN NULL;
END $$;

-- Stock changes of one use case, all through inventory.apply_movement, in (sku, location) order.
-- The caller holds the locks already or takes them here (lock_levels sorts); raises OS409 if the
-- invariant would break.
CREATE FUNCTION orders.move_stock(
    p_skus text[], p_locations text[], p_kind text, p_on_hand_deltas int[], p_reserved_deltas int[],
    p_reference text, p_reason text, p_actor text
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    PERFORM 1 FROM inventory.lock_levels(p_skus, p_locations);
    FOR m IN SELECT * FROM unnest(p_skus, p_locations, p_on_hand_deltas, p_reserved_deltas) AS t(sku, loc, oh, rs)
             ORDER BY sku, loc
    LOOP
        PERFORM inventory.apply_movement(m.sku, m.loc, p_kind, m.oh, m.rs, p_reference, p_reason, p_actor);
    END LOOP;
END $$;

CREATE FUNCTION orders.insert_order(
    p_id uuid, p_channel text, p_external_id text, p_selling_location_id text, p_currency text,
    p_fulfillment_type text, p_pickup_location_id text, p_ship_to_lat float8, p_ship_to_lon float8,
    p_status text, p_lines_total numeric, p_shipping numeric, p_tax numeric, p_discount numeric, p_total numeric,
    p_reserved_until timestamptz, p_paid_at timestamptz, p_payment jsonb, p_actor text,
    p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_lines int[], p_alloc_locations text[], p_alloc_qtys int[], p_alloc_fulfilled int[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orders.orders (id, channel, external_id, selling_location_id, currency, fulfillment_type,
        pickup_location_id, ship_to_lat, ship_to_lon, status, lines_total, shipping, tax, discount, total,
        reserved_until, paid_at, payment, charges_recognized, placed_by)
    VALUES (p_id, p_channel, p_external_id, p_selling_location_id, p_currency, p_fulfillment_type,
        p_pickup_location_id, p_ship_to_lat, p_ship_to_lon, p_status, p_lines_total, p_shipping, p_tax,
        p_discount, p_total, p_reserved_until, p_paid_at, p_payment, p_status = 'fulfilled', p_actor);
    INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price)
    SELECT p_id, n, sku, qty, price FROM unnest(p_line_skus, p_line_qtys, p_line_prices)
        WITH ORDINALITY AS l(sku, qty, price, n);
    INSERT INTO orders.allocations (order_id, line_no, location_id, qty, fulfilled_qty)
    SELECT p_id, line_no, loc, qty, fulfilled
      FROM unnest(p_alloc_lines, p_alloc_locations, p_alloc_qtys, p_alloc_fulfilled) AS a(line_no, loc, qty, fulfilled);
END $$;

-- Place an order in one call: reserve every allocation (inventory.reserve_many locks the levels in
-- the global order and is all-or-nothing), then write the order, its history and its event. Returns
-- the short items, with nothing written and no lock kept, when stock is missing.
CREATE FUNCTION orders.place_order(
    p_id uuid, p_channel text, p_external_id text, p_selling_location_id text, p_currency text,
    p_fulfillment_type text, p_pickup_location_id text, p_ship_to_lat float8, p_ship_to_lon float8,
    p_lines_total numeric, p_shipping numeric, p_tax numeric, p_discount numeric, p_total numeric,
    p_reserved_until timestamptz, p_actor text,
    p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_alloc_lines int[], p_alloc_locations text[], p_alloc_qtys int[],
    p_event jsonb,
    OUT short jsonb, OUT placed_at timestamptz
) LANGUAGE plpgsql AS $$
BEGIN
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
    INSERT INTO orders.order_lines (order_id, line_no, sku, qty, unit_price)
    SELECT p_id, n, sku, qty, price FROM unnest(p_line_skus, p_line_qtys, p_line_prices)
        WITH ORDINALITY AS l(sku, qty, price, n);
    INSERT INTO orders.allocations (order_id, line_no, location_id, qty)
    SELECT p_id, line_no, loc, qty FROM unnest(p_alloc_lines, p_alloc_locations, p_alloc_qtys) AS a(line_no, loc, qty);
    INSERT INTO orders.status_history (order_id, seq, event, status, actor) VALUES (p_id, 1, 'placed', 'placed', p_actor);
    INSERT INTO core.events (topic, key, payload) VALUES ('order.placed', p_id::text, p_event);
    placed_at := now();
END $$;

-- A sales record, its business day taken in the location's time zone, and its event.
CREATE FUNCTION orders.record_sale(
    p_kind text, p_channel text, p_order_id uuid, p_location_id text, p_currency text, p_lines jsonb,
    p_goods numeric, p_shipping numeric, p_tax numeric, p_discount numeric, p_total numeric,
    p_tenders jsonb, p_reference text, p_actor text
) RETURNS orders.sales LANGUAGE plpgsql AS $$
DECLARE
    sale orders.sales;
BEGIN
    INSERT INTO orders.sales (kind, channel, order_id, location_id, business_day, currency, lines, goods_amount,
                              shipping, tax, discount, total, tenders, reference, actor)
    SELECT p_kind, p_channel, p_order_id, p_location_id,
           (now() AT TIME ZONE coalesce((SELECT timezone FROM inventory.locations WHERE id = p_location_id), 'UTC'))::date,
           p_currency, p_lines, p_goods, p_shipping, p_tax, p_discount, p_total, p_tenders, p_reference, p_actor
    RETURNING * INTO sale;
    INSERT INTO core.events (topic, key, payload)
    VALUES ('sale.recorded', p_order_id::text, jsonb_build_object(
        'sale_id', sale.id, 'kind', p_kind, 'channel', p_channel, 'order_id', p_order_id,
        'location_id', p_location_id, 'business_day', sale.business_day, 'currency', p_currency,
        'lines', p_lines, 'goods_amount', p_goods, 'shipping', p_shipping, 'tax', p_tax,
        'discount', p_discount, 'total', p_total, 'tenders', p_tenders, 'occurred_at', sale.occurred_at));
    RETURN sale;
END $$;

-- A till sale in one call: lock and check the store's levels, take the goods off on-hand, write the
-- order (already fulfilled and paid), its sale record and events.
CREATE FUNCTION orders.record_till_sale(
    p_id uuid, p_location_id text, p_currency text, p_lines_total numeric, p_tax numeric, p_discount numeric,
    p_total numeric, p_actor text, p_line_skus text[], p_line_qtys int[], p_line_prices numeric[],
    p_sale_lines jsonb, p_tenders jsonb, p_event jsonb,
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
        p_line_skus, p_line_qtys, p_line_prices, line_nos, locs, p_line_qtys, p_line_qtys);
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
