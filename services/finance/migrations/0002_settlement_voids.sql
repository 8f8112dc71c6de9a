-- A wrong settlement is voided, never deleted or overwritten: the row keeps its values and gains when,
-- by whom and why it was voided. Reconciliation counts live rows only, so (provider, external_id) is
-- unique among live rows, and the corrected row is imported under the same key beside the voided one.
ALTER TABLE finance.settlements
    ADD COLUMN voided_at    timestamptz,
    ADD COLUMN voided_by    text,
    ADD COLUMN void_reason  text,
    ADD CONSTRAINT settlements_void_complete CHECK (
        (voided_at IS NULL) = (voided_by IS NULL) AND (voided_at IS NULL) = (void_reason IS NULL));
ALTER TABLE finance.settlements DROP CONSTRAINT settlements_provider_external_id_key;
CREATE UNIQUE INDEX settlements_live_key ON finance.settlements (provider, external_id) WHERE voided_at IS NULL;
CREATE INDEX settlements_voided_key ON finance.settlements (provider, external_id) WHERE voided_at IS NOT NULL;

-- Rows of a file identical to a voided settlement (and with no live one) that were not imported again.
ALTER TABLE finance.import_batches ADD COLUMN skipped_voided int NOT NULL DEFAULT 0;

-- A void looks for the runs that linked the settlement in a resolution (they are few, but unindexed).
CREATE INDEX resolutions_settlement ON finance.resolutions (settlement_id) WHERE settlement_id IS NOT NULL;
