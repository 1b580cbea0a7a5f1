-- Accounts of users and client systems: a read model of the user and client streams, written
-- in the same transaction as their events, next to what must never be an event (password
-- hashes, login failures, client secret hashes, refresh tokens).
CREATE TABLE IF NOT EXISTS accounts (
    principal_type       text     NOT NULL CHECK (principal_type IN ('user', 'client')),
    principal_id         text     NOT NULL,
    name                 text     NOT NULL,              -- username, or the client system's name
    roles                text[]   NOT NULL DEFAULT '{}',
    scopes               text[]   NOT NULL DEFAULT '{}',
    level                text     NOT NULL,
    jurisdiction         char(12) NOT NULL,
    department           text,
    active               boolean  NOT NULL,
    must_change_password boolean  NOT NULL DEFAULT false,
    version              integer  NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal_type, principal_id)
);
-- Usernames are unique, also against concurrent creations.
CREATE UNIQUE INDEX IF NOT EXISTS accounts_username_idx ON accounts (name) WHERE principal_type = 'user';
CREATE INDEX IF NOT EXISTS accounts_jurisdiction_idx ON accounts (jurisdiction bpchar_pattern_ops);

CREATE TABLE IF NOT EXISTS user_credentials (
    user_id       text PRIMARY KEY,
    password_hash text NOT NULL,                       -- scrypt$n$r$p$salt$hash
    failures      timestamptz[] NOT NULL DEFAULT '{}'  -- recent failed logins (lockout window)
);

CREATE TABLE IF NOT EXISTS client_secrets (
    client_id   text NOT NULL,
    secret_id   text NOT NULL,
    secret_hash text NOT NULL,                         -- sha256$<base64url>
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, secret_id)
);

-- Refresh tokens by their SHA-256 (the token itself is never stored).
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash char(64)    PRIMARY KEY,
    subject    text        NOT NULL,
    session_id text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_subject_idx ON refresh_tokens (subject);

-- Ended sessions: their access tokens (claim sid) are refused until they expire.
CREATE TABLE IF NOT EXISTS revoked_sessions (
    session_id text        PRIMARY KEY,
    revoked_at timestamptz NOT NULL
);

-- The access log auditors query: one row per PersonalDataAccessed or AccessDenied event,
-- written in the same transaction as the event.
CREATE TABLE IF NOT EXISTS access_log (
    access_id      uuid        PRIMARY KEY,
    kind           text        NOT NULL CHECK (kind IN ('personal_data', 'denied')),
    principal_type text        NOT NULL,
    principal_id   text        NOT NULL,
    route          text        NOT NULL,
    action         text,
    purpose        text,
    reason         text,
    records        text[]      NOT NULL DEFAULT '{}',
    count          integer     NOT NULL DEFAULT 0,
    at             timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_at_idx ON access_log (at DESC, access_id);
CREATE INDEX IF NOT EXISTS access_log_principal_idx ON access_log (principal_id, at DESC);
CREATE INDEX IF NOT EXISTS access_log_records_idx ON access_log USING gin (records);
