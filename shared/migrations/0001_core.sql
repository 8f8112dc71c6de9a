-- Plumbing every service shares: API keys, idempotency records, the outbox of events.
CREATE SCHEMA IF NOT EXISTS core;

CREATE TABLE core.api_keys (
    id          bigserial PRIMARY KEY,
    key_hash    bytea NOT NULL UNIQUE,      -- SHA-256 of the key; the key itself is never stored
    role        text NOT NULL CHECK (role IN ('admin', 'ops', 'store', 'shop', 'finance', 'auditor')),
    location_id text,
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'store') = (location_id IS NOT NULL))
);

CREATE TABLE core.idempotency_keys (
    scope         text NOT NULL,            -- endpoint + principal: two clients never share a key space
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status        int,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- The outbox. `txid` is the writing transaction's id: readers only take rows whose transaction is
-- older than every transaction still running (pg_snapshot_xmin), in (txid, id) order. A bigserial
-- alone cannot be a cursor, because ids are handed out before commit and commit out of order.
CREATE TABLE core.events (
    id          bigserial PRIMARY KEY,
    txid        bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    topic       text NOT NULL,
    key         text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX events_position ON core.events (txid, id);

CREATE FUNCTION core.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One notification per statement; PostgreSQL delivers it at commit and folds duplicates.
    PERFORM pg_notify('omnistock_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER events_notify AFTER INSERT ON core.events
    FOR EACH STATEMENT EXECUTE FUNCTION core.notify_events();
