-- Each organisation signs where it runs (issue 12): a batch's signature is now made by its submitter,
-- before the ledger assigns seqs, over a statement that names no seqs (ledger.signing, "submission").
-- Batches stored before keep their statement form, "batch", and verify as they always did.
ALTER TABLE ledger.batches ADD COLUMN statement text NOT NULL DEFAULT 'batch'
    CHECK (statement IN ('batch', 'submission'));

-- Co-signatures arrive after the ledger signed its checkpoint (finance signs in its own process), and
-- ledger.checkpoints is append-only, so each is a row of its own: one per checkpoint and organisation.
-- Checkpoints signed before keep finance's signature inside ledger.checkpoints.signatures.
CREATE TABLE ledger.cosignatures (
    tree_size  bigint NOT NULL REFERENCES ledger.checkpoints (tree_size),
    org        text   NOT NULL,
    cert_pem   text   NOT NULL,
    signature  text   NOT NULL,
    PRIMARY KEY (tree_size, org)
);

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON ledger.cosignatures
    FOR EACH ROW EXECUTE FUNCTION ledger.reject_change();
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON ledger.cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.reject_change();

REVOKE ALL ON ledger.cosignatures FROM PUBLIC;
GRANT SELECT, INSERT ON ledger.cosignatures TO omnistock_ledger;
