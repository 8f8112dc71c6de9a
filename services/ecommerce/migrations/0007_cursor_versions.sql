-- The projector writes a batch of stock changes in one statement outside any transaction, on the
-- condition that its cursor is still where it read it (services/ecommerce/repository.py SAVE_BATCH).
-- An explicit transaction held a transaction id from its first write to its commit, between which this
-- busy process often served other work for tens of milliseconds; every outbox reader waits for the
-- oldest such transaction to end, so the projector held back every stream. The version moves with every
-- change of a cursor, including a rebuild that leaves the position where it was.
ALTER TABLE ecommerce.cursors ADD COLUMN version bigint NOT NULL DEFAULT 0;
