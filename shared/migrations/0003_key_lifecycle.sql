-- Key lifecycle: keys expire, record when they were last used, and every process's auth cache hears
-- of a change to a key at once (LISTEN omnistock_keys) instead of trusting its copy for a TTL.
ALTER TABLE core.api_keys
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN created_by   bigint REFERENCES core.api_keys (id),   -- NULL: the owner (CLI, bootstrap)
    ADD COLUMN revoked_by   bigint REFERENCES core.api_keys (id);
-- The list pages newest first by (created_at, id); active admin keys are counted on every revocation.
CREATE INDEX api_keys_listing ON core.api_keys (created_at DESC, id DESC);

-- A key's change is announced by its id; the payload is never the hash. Keys change rarely (created,
-- revoked, expiry moved), so the commit-serialising cost of NOTIFY (see 0002) is paid only then, and
-- never by the last-used bookkeeping (a batched UPDATE of last_used_at alone, which notifies nothing).
CREATE FUNCTION core.notify_api_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('omnistock_keys', OLD.id::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('omnistock_keys', NEW.id::text);
    RETURN NEW;
END $$;

CREATE TRIGGER api_keys_changed
    AFTER INSERT OR DELETE OR UPDATE OF key_hash, role, location_id, revoked_at, expires_at ON core.api_keys
    FOR EACH ROW EXECUTE FUNCTION core.notify_api_key_change();

-- Issuing and revoking keys. Service roles may not write core.api_keys (shared/roles.py); they reach
-- these two operations only through the admin_* functions below, which check inside the database that
-- the caller holds an active admin key, so a service role's password alone mints or revokes nothing.
-- Errors carry SQLSTATEs of our own (class OS) that shared/keys.py turns into problems.
CREATE FUNCTION core.issue_api_key(p_role text, p_location_id text, p_label text, p_expires_at timestamptz,
                                   p_key_hash bytea, p_created_by bigint)
RETURNS SETOF core.api_keys LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_location_id IS NOT NULL AND to_regclass('inventory.locations') IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM inventory.locations WHERE id = p_location_id) THEN
            RAISE EXCEPTION 'unknown location %', p_location_id USING ERRCODE = 'OS001';
        END IF;
    END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at <= now() THEN
        RAISE EXCEPTION 'expiry in the past' USING ERRCODE = 'OS002';
    END IF;
    RETURN QUERY
        INSERT INTO core.api_keys (key_hash, role, location_id, label, expires_at, created_by)
        VALUES (p_key_hash, p_role, p_location_id, p_label, p_expires_at, p_created_by)
        RETURNING *;
END $$;

CREATE FUNCTION core.revoke_api_key(p_id bigint, p_revoked_by bigint)
RETURNS SETOF core.api_keys LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target core.api_keys;
BEGIN
    -- Every active admin key locked, in id order, before counting: two revocations of the last two
    -- admin keys at once see each other's, and the second is refused instead of both going through.
    PERFORM 1 FROM core.api_keys
        WHERE role = 'admin' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        ORDER BY id FOR UPDATE;
    SELECT * INTO target FROM core.api_keys WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no key %', p_id USING ERRCODE = 'OS004';
    END IF;
    IF target.revoked_at IS NOT NULL THEN
        RETURN NEXT target;  -- revoked already: revoking again changes nothing
        RETURN;
    END IF;
    IF target.role = 'admin' AND (target.expires_at IS NULL OR target.expires_at > now()) AND NOT EXISTS (
        SELECT 1 FROM core.api_keys WHERE role = 'admin' AND id <> p_id AND revoked_at IS NULL
            AND (expires_at IS NULL OR expires_at > now())) THEN
        RAISE EXCEPTION 'last active admin key' USING ERRCODE = 'OS005';
    END IF;
    RETURN QUERY
        UPDATE core.api_keys SET revoked_at = now(), revoked_by = p_revoked_by WHERE id = p_id RETURNING *;
END $$;

-- The id of the active admin key `p_admin_key` (the key itself, hashed here: the hashes are readable
-- by every service role, the keys are not), or OS003.
CREATE FUNCTION core.acting_admin(p_admin_key text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    actor bigint;
BEGIN
    SELECT id INTO actor FROM core.api_keys
        WHERE key_hash = sha256(convert_to(p_admin_key, 'UTF8')) AND role = 'admin' AND revoked_at IS NULL
          AND (expires_at IS NULL OR expires_at > now());
    IF actor IS NULL THEN
        RAISE EXCEPTION 'not an active admin key' USING ERRCODE = 'OS003';
    END IF;
    RETURN actor;
END $$;

CREATE FUNCTION core.admin_issue_api_key(p_admin_key text, p_role text, p_location_id text, p_label text,
                                         p_expires_at timestamptz, p_key_hash bytea)
RETURNS SETOF core.api_keys LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM core.issue_api_key(p_role, p_location_id, p_label, p_expires_at, p_key_hash,
                                     core.acting_admin(p_admin_key));
$$;

CREATE FUNCTION core.admin_revoke_api_key(p_admin_key text, p_id bigint)
RETURNS SETOF core.api_keys LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM core.revoke_api_key(p_id, core.acting_admin(p_admin_key));
$$;

-- Functions are executable by PUBLIC unless revoked; shared/roles.py grants the admin_* ones to the
-- service roles (and re-applies that after every migration run).
REVOKE ALL ON FUNCTION core.issue_api_key(text, text, text, timestamptz, bytea, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION core.revoke_api_key(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION core.acting_admin(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION core.admin_issue_api_key(text, text, text, text, timestamptz, bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION core.admin_revoke_api_key(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION core.notify_api_key_change() FROM PUBLIC;
