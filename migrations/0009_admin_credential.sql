-- The platform admin's credential when none is configured: generated at the first start, kept
-- across restarts and shared by every instance; only its SHA-256 is stored.
-- `saas-ledger admin-token rotate` replaces it.
CREATE TABLE admin_credential (
    id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    token_sha256 text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rotated_at   timestamptz
);
