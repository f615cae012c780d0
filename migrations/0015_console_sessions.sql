-- Operator console sessions (`/console`). The cookie holds a random token; only its SHA-256
-- is stored. A session is the platform admin's or a tenant owner/admin key's: for a key, the
-- key's hash (as `api_keys` stores it), so a revoked key ends its sessions at once. Each
-- session has its own CSRF token, carried by every form.
CREATE TABLE console_sessions (
    token_sha256 text        PRIMARY KEY,
    admin        boolean     NOT NULL,
    key_sha256   text,
    csrf         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK (admin OR key_sha256 IS NOT NULL)
);

CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
