-- The console's people and their sessions. Users are created, changed and disabled only by the owner
-- (`omnistock users ...`); the console's own role reads them and writes only sessions and sign-in
-- attempts (shared/roles.py), so a leaked console password cannot make anyone an admin.
CREATE SCHEMA console;

CREATE TABLE console.users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('admin', 'ops', 'store', 'finance', 'auditor')),
    location_id   text,
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    -- A store associate works at one store; every other role works across locations.
    CHECK ((role = 'store') = (location_id IS NOT NULL))
);

-- A session is known by the SHA-256 of its cookie; its person's API key is stored sealed with a key
-- derived from that cookie (services/console/sessions.py), so a copy of this table opens nothing.
CREATE TABLE console.sessions (
    token_hash   bytea PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES console.users (id),
    api_key_id   bigint NOT NULL,
    sealed_key   bytea NOT NULL,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    ended_at     timestamptz,
    end_reason   text CHECK (end_reason IN ('signed-out', 'idle', 'expired', 'disabled'))
);
CREATE INDEX sessions_of_user ON console.sessions (user_id) WHERE ended_at IS NULL;
CREATE INDEX sessions_open_by_expiry ON console.sessions (expires_at) WHERE ended_at IS NULL;

-- Failed sign-ins, counted per user name and per client address over a window (password guessing).
CREATE TABLE console.sign_in_failures (
    id       bigserial PRIMARY KEY,
    username text NOT NULL,
    client   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_by_user ON console.sign_in_failures (username, at);
CREATE INDEX sign_in_failures_by_client ON console.sign_in_failures (client, at);

-- A person's key: the role and location are the user's own, read here, never the caller's word; the
-- user must be enabled; the key lives at most a day. Owned by the owner (it writes core.api_keys,
-- which no service role may), callable only by the console's role (shared/roles.py).
CREATE FUNCTION console.issue_person_key(p_user_id bigint, p_key_hash bytea, p_expires_at timestamptz)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    person console.users;
    key_id bigint;
BEGIN
    SELECT * INTO person FROM console.users WHERE id = p_user_id AND disabled_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no enabled user %', p_user_id USING ERRCODE = 'OS010';
    END IF;
    INSERT INTO core.api_keys (key_hash, role, location_id, label, expires_at, person)
        VALUES (p_key_hash, person.role, person.location_id, 'console sign-in',
                least(p_expires_at, now() + interval '1 day'), person.username)
        RETURNING id INTO key_id;
    RETURN key_id;
END $$;

-- Only a person's key (one the function above issued), never a machine's.
CREATE FUNCTION console.revoke_person_key(p_key_id bigint) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE core.api_keys SET revoked_at = now()
        WHERE id = p_key_id AND person IS NOT NULL AND revoked_at IS NULL;
$$;

REVOKE ALL ON FUNCTION console.issue_person_key(bigint, bytea, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION console.revoke_person_key(bigint) FROM PUBLIC;
