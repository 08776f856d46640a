-- Buyer accounts (--identity accounts): one per email, compared case-insensitively whatever
-- the caller sends; only argon2id hashes are kept.
CREATE TABLE IF NOT EXISTS accounts (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_email_lower ON accounts (lower(email));

-- Sessions ended by a logout, kept until their token would have expired anyway. Every instance
-- polls the rows recorded since its last read (by `revoked_at`, with an overlap).
CREATE TABLE IF NOT EXISTS revoked_sessions (
    session_id uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS revoked_sessions_revoked_at ON revoked_sessions (revoked_at);
