-- The online channel: sellable availability (a projection of inventory's outbox events), channel
-- rules, outbound webhooks with their delivery log, and inbound shop orders.
CREATE SCHEMA IF NOT EXISTS ecommerce;

-- Where each outbox consumer of this service has got to. A consumer locks its row, does a batch and
-- moves the cursor in ONE transaction, so a crash replays a whole batch or none of it, and two
-- replicas never work the same batch (the second skips the locked row).
CREATE TABLE ecommerce.cursors (
    name        text PRIMARY KEY,
    txid        bigint NOT NULL DEFAULT 0,
    event_id    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ecommerce.cursors (name) VALUES ('availability'), ('webhooks');

-- Mirrors of inventory's locations and per-location availability, refreshed from inventory for every
-- (sku, location) an event names. Re-reading the row (rather than applying the event's numbers) makes
-- applying idempotent and immune to events of one row arriving out of (txid, id) order.
CREATE TABLE ecommerce.locations (
    location_id text PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL,
    ship        boolean NOT NULL,
    pickup      boolean NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL
);

CREATE TABLE ecommerce.levels (
    sku          text NOT NULL,
    location_id  text NOT NULL,
    available    bigint NOT NULL CHECK (available >= 0),
    PRIMARY KEY (sku, location_id)
);
CREATE INDEX levels_location ON ecommerce.levels (location_id);

-- What the shop may sell per SKU: the sum over ship-enabled locations, less the channel buffer.
CREATE TABLE ecommerce.availability (
    sku             text PRIMARY KEY,
    ship_available  bigint NOT NULL CHECK (ship_available >= 0),
    sellable        bigint NOT NULL CHECK (sellable >= 0 AND sellable <= ship_available),
    state           text NOT NULL CHECK (state IN ('in_stock', 'low_stock', 'out_of_stock')),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Channel buffer and low-stock threshold, per SKU or as the default (scope '*', never a valid SKU).
-- A NULL field of a SKU's rule falls back to the default's.
CREATE TABLE ecommerce.channel_rules (
    scope                text PRIMARY KEY,
    buffer_kind          text CHECK (buffer_kind IN ('absolute', 'percent')),
    buffer_value         numeric(14, 2) CHECK (buffer_value >= 0),
    low_stock_threshold  bigint CHECK (low_stock_threshold >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((buffer_kind IS NULL) = (buffer_value IS NULL)),
    CHECK (buffer_kind IS DISTINCT FROM 'percent' OR buffer_value <= 100),
    CHECK (buffer_kind IS DISTINCT FROM 'absolute' OR buffer_value = trunc(buffer_value))
);

CREATE TABLE ecommerce.webhook_subscriptions (
    id          bigserial PRIMARY KEY,
    url         text NOT NULL,
    events      text[] NOT NULL CHECK (cardinality(events) > 0),
    secret      text NOT NULL,          -- needed in clear to sign; never returned by the API
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- One row per message to send. Per (subscription, key) the rows form a queue in id order: only the
-- oldest unfinished one may be sent, which keeps each SKU's messages in order.
CREATE TABLE ecommerce.webhook_deliveries (
    id               bigserial PRIMARY KEY,
    subscription_id  bigint NOT NULL REFERENCES ecommerce.webhook_subscriptions (id),
    event_id         bigint NOT NULL,
    topic            text NOT NULL,
    key              text NOT NULL,
    body             bytea NOT NULL,     -- the exact bytes signed and sent, the same on every attempt
    status           text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'sending', 'delivered', 'dead', 'cancelled')),
    attempts         int NOT NULL DEFAULT 0,
    coalesced        int NOT NULL DEFAULT 0,   -- later changes folded into this message before it left
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,
    last_status_code int,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON ecommerce.webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_queue ON ecommerce.webhook_deliveries (subscription_id, key, id)
    WHERE status IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_log ON ecommerce.webhook_deliveries (subscription_id, id);

CREATE TABLE ecommerce.webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES ecommerce.webhook_deliveries (id),
    attempt      int NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    status_code  int,
    error        text
);
CREATE INDEX webhook_attempts_delivery ON ecommerce.webhook_attempts (delivery_id, attempt);
