-- Finance: payment settlements, store close-outs, reconciliation runs with their items, resolutions,
-- and what has been committed to the ledger. Sales are read from orders.sales (read-only).
CREATE SCHEMA IF NOT EXISTS finance;

CREATE TABLE finance.import_batches (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL,              -- json, csv, or the file name the CLI read
    received     int NOT NULL,
    inserted     int NOT NULL,
    already      int NOT NULL,               -- rows whose (provider, external_id) was imported before
    imported_by  text NOT NULL,
    imported_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per payment movement a provider reports. `order_ref` is the order id as the provider sent it
-- (our order id, or the channel's external id); `order_id` is what it resolved to, at import or at the
-- next run if the order was not known yet.
CREATE TABLE finance.settlements (
    id           bigserial PRIMARY KEY,
    provider     text NOT NULL,
    external_id  text NOT NULL,
    order_ref    text NOT NULL,
    order_id     uuid,
    type         text NOT NULL CHECK (type IN ('capture', 'refund')),
    amount       numeric(14, 2) NOT NULL CHECK (amount >= 0),
    fee          numeric(14, 2) NOT NULL DEFAULT 0 CHECK (fee >= 0),
    currency     char(3) NOT NULL,
    settled_at   timestamptz NOT NULL,
    batch_id     bigint NOT NULL REFERENCES finance.import_batches (id),
    UNIQUE (provider, external_id)
);
CREATE INDEX settlements_order ON finance.settlements (order_id);
CREATE INDEX settlements_unresolved ON finance.settlements (order_ref) WHERE order_id IS NULL;
CREATE INDEX settlements_settled ON finance.settlements (settled_at);

-- A store's end-of-day declaration; declaring again adds a row, the latest one counts.
CREATE TABLE finance.closeouts (
    id            bigserial PRIMARY KEY,
    location_id   text NOT NULL,
    business_day  date NOT NULL,
    currency      char(3) NOT NULL,
    tenders       jsonb NOT NULL,            -- [{kind, amount}]
    note          text,
    declared_by   text NOT NULL,
    declared_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX closeouts_day ON finance.closeouts (business_day, location_id, id DESC);

-- A run never changes after it is written, except for the markers of what happened to it later:
-- superseded by a newer run of the same scope, committed to the ledger (with an optional override).
CREATE TABLE finance.runs (
    id                bigint PRIMARY KEY,
    business_day      date NOT NULL,
    channel           text CHECK (channel IN ('online', 'store')),
    location_id       text,
    amount_tolerance  numeric(14, 2) NOT NULL,
    cash_tolerance    numeric(14, 2) NOT NULL,
    counts            jsonb NOT NULL,        -- {matched, amount_mismatch, missing_payment, missing_sale, duplicate}
    totals            jsonb NOT NULL,        -- [{currency, sales, expected, paid, difference, fees}]
    item_count        int NOT NULL,
    items_root        text NOT NULL,         -- RFC 9162 Merkle root (hex) of the items' canonical JSON, by item_no
    created_by        text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- deferred: a new run marks the one it supersedes before its own row is written
    supersedes        bigint REFERENCES finance.runs (id) DEFERRABLE INITIALLY DEFERRED,
    superseded_by     bigint REFERENCES finance.runs (id) DEFERRABLE INITIALLY DEFERRED,
    committed_at      timestamptz,
    committed_by      text,
    override_reason   text,
    override_by       text
);
CREATE SEQUENCE finance.run_ids OWNED BY finance.runs.id;
CREATE UNIQUE INDEX runs_current ON finance.runs (business_day, coalesce(channel, ''), coalesce(location_id, ''))
    WHERE superseded_by IS NULL;

-- Items are written in bulk (COPY) in the run's transaction; the run row goes in last, so no
-- foreign key check per item is needed to keep them together.
CREATE TABLE finance.run_items (
    run_id          bigint NOT NULL,
    item_no         int NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('order', 'settlement', 'tender')),
    class           text NOT NULL CHECK (class IN ('matched', 'amount_mismatch', 'missing_payment',
                                                   'missing_sale', 'duplicate')),
    order_id        uuid,
    order_ref       text,
    channel         text,
    location_id     text,
    tender          text,
    currency        char(3) NOT NULL,
    sales_total     numeric(14, 2) NOT NULL,   -- the order's sales in the run's scope that day
    expected        numeric(14, 2) NOT NULL,
    paid            numeric(14, 2) NOT NULL,
    difference      numeric(14, 2) NOT NULL,   -- paid - expected
    sale_ids        bigint[] NOT NULL,
    settlement_ids  bigint[] NOT NULL,
    note            text,
    PRIMARY KEY (run_id, item_no)
);
CREATE INDEX run_items_exceptions ON finance.run_items (run_id, item_no) WHERE class <> 'matched';

CREATE TABLE finance.resolutions (
    run_id          bigint NOT NULL REFERENCES finance.runs (id),
    item_no         int NOT NULL,
    action          text NOT NULL CHECK (action IN ('write_off', 'adjustment', 'linked_settlement')),
    reason          text NOT NULL,
    amount          numeric(14, 2),
    settlement_id   bigint REFERENCES finance.settlements (id),
    resolved_by     text NOT NULL,
    resolved_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, item_no),
    CHECK ((action = 'linked_settlement') = (settlement_id IS NOT NULL))
);

-- What went onto the ledger, one row per entry, keyed so that a second commit writes nothing new.
CREATE TABLE finance.ledger_commits (
    entry_key     text PRIMARY KEY,          -- sale:<order id>:<business day>  or  run:<run id>
    run_id        bigint NOT NULL REFERENCES finance.runs (id),
    kind          text NOT NULL CHECK (kind IN ('reconciled_sale', 'reconciliation_summary')),
    receipt       jsonb NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_commits_run ON finance.ledger_commits (run_id);
