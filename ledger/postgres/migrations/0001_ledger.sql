-- The embedded ledger: an RFC 9162 Merkle log, append-only twice over.
--   1. Triggers reject UPDATE, DELETE and TRUNCATE on every ledger table, whoever asks.
--   2. The ledger service works as role omnistock_ledger, which holds INSERT and SELECT only.
-- A superuser can still bypass both (session_replication_role = replica); that is what
-- `omnistock ledger audit` and the offline verifier are for: signatures and hashes, not permissions,
-- are what finally prove the log.
CREATE SCHEMA ledger;

-- One row per append: the submitter's signature over the batch's Merkle root (ledger.signing).
CREATE TABLE ledger.batches (
    id          bigint PRIMARY KEY CHECK (id >= 0),
    org         text   NOT NULL,
    first_seq   bigint NOT NULL CHECK (first_seq >= 0),
    last_seq    bigint NOT NULL,
    signed_at   text   NOT NULL,  -- the exact timestamp text the signature covers
    batch_root  bytea  NOT NULL CHECK (length(batch_root) = 32),
    cert_pem    text   NOT NULL,
    signature   text   NOT NULL,
    CHECK (last_seq >= first_seq),
    UNIQUE (first_seq)
);

-- One row per entry; seq is the Merkle leaf index. `canonical` is exactly what the leaf hashes
-- (ledger.encoding); `kind` is a copy used to filter reads, and the audit checks it against the bytes.
CREATE TABLE ledger.entries (
    seq        bigint PRIMARY KEY CHECK (seq >= 0),
    batch_id   bigint NOT NULL REFERENCES ledger.batches (id),
    kind       text   NOT NULL,
    canonical  bytea  NOT NULL,
    leaf_hash  bytea  NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE INDEX entries_kind ON ledger.entries (kind, seq);

-- Every complete perfect subtree, once: node (level, idx) covers leaves [idx * 2^level, (idx+1) * 2^level).
-- Written in the append's transaction and never changed, so a proof is O(log^2 n) index lookups.
-- Level 0 repeats the leaf hashes, so that a row moved or edited in ledger.entries disagrees with
-- a node at exactly its own seq.
CREATE TABLE ledger.nodes (
    level  smallint NOT NULL CHECK (level >= 0 AND level < 64),
    idx    bigint   NOT NULL CHECK (idx >= 0),
    hash   bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

-- Signed tree heads: the ledger's signature and finance's co-signature over (tree_size, root, time).
CREATE TABLE ledger.checkpoints (
    tree_size   bigint PRIMARY KEY CHECK (tree_size >= 0),
    root_hash   bytea  NOT NULL CHECK (length(root_hash) = 32),
    signed_at   text   NOT NULL,
    signatures  jsonb  NOT NULL  -- [{org, cert_pem, signature}] as ledger.signing writes them
);

CREATE FUNCTION ledger.reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['batches', 'entries', 'nodes', 'checkpoints'] LOOP
        EXECUTE format('CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON ledger.%I
                        FOR EACH ROW EXECUTE FUNCTION ledger.reject_change()', t);
        EXECUTE format('CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON ledger.%I
                        FOR EACH STATEMENT EXECUTE FUNCTION ledger.reject_change()', t);
    END LOOP;
END
$$;

-- Roles are cluster-wide while this file runs once per database (and the test template plus its
-- clones share one cluster), so create the role only if no database created it before; a
-- concurrent creator winning the race is fine too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'omnistock_ledger') THEN
        CREATE ROLE omnistock_ledger NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA ledger FROM PUBLIC;
GRANT USAGE ON SCHEMA ledger TO omnistock_ledger;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA ledger TO omnistock_ledger;
