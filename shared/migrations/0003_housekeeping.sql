-- Housekeeping (shared/housekeeping.py): idempotency records and outbox events leave after a window.

-- The pruner takes the oldest idempotency records first, a few thousand per statement: without an index
-- on age, each batch would scan the whole table (its rows are mixed in the heap once vacuum reuses
-- space). A monotonic timestamp only ever appends to the index's rightmost page, so writers pay one
-- cheap insertion. IF NOT EXISTS: on a large existing table an operator can build it first with
-- CREATE INDEX CONCURRENTLY under this name, and this migration (run in a transaction, where
-- CONCURRENTLY is not allowed, and which would block writers for the build) then does nothing.
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON core.idempotency_keys (created_at);

-- How far the outbox has been pruned. Events leave as a prefix in position (txid, id) order, so every
-- event after a retained one is retained too: a stream resumed from a retained id loses nothing. A
-- stream resumed from an id at or below `max_pruned_id` that is no longer there (or from 0 once anything
-- was pruned) is told to resync instead of silently skipping what left. Written only by the pruner, in
-- the transaction that deletes the events.
CREATE TABLE core.outbox_horizon (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    txid           bigint NOT NULL DEFAULT 0,   -- position of the last event pruned
    event_id       bigint NOT NULL DEFAULT 0,
    max_pruned_id  bigint NOT NULL DEFAULT 0,   -- the largest id ever pruned (ids and positions differ in order)
    pruned_at      timestamptz
);
INSERT INTO core.outbox_horizon DEFAULT VALUES;
