-- An entry's `entry_key` (when it has one) names the fact it records: the log holds each (kind,
-- entry_key) at most once, so an append retried after a crash between the ledger's commit and the
-- caller's record of its receipts finds the entry instead of writing it twice. The column copies the
-- key out of the canonical bytes for the unique index; the append compares the bytes themselves, so
-- an edited column cannot pass one entry off as another. Entries appended before this migration have
-- no key in the column (the log was empty everywhere when it was written).
ALTER TABLE ledger.entries ADD COLUMN entry_key text;
CREATE UNIQUE INDEX entries_entry_key ON ledger.entries (kind, entry_key) WHERE entry_key IS NOT NULL;
