-- Operability and trust: idempotency records, rate-limit buckets, per-tenant personal-data keys.

-- Idempotency-Key records (see api/src/idempotency.rs): one per (caller scope, key), claimed by
-- the first request (status NULL while it runs), completed with the response to replay.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    status       smallint,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Token buckets per API key (see api/src/rate_limit.rs). UNLOGGED: no WAL per request; a crash
-- empties it, which only ever errs in the client's favour.
CREATE UNLOGGED TABLE rate_buckets (
    key_id     uuid             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL,
    allowed    boolean          NOT NULL
);

-- Per-tenant keys for personal data (crypto-shredding, see commands/src/vault.rs). Erasure
-- sets key to NULL and keeps the row, so no key is ever made for that tenant again.
CREATE TABLE personal_data_keys (
    tenant_id  uuid        PRIMARY KEY,
    key        bytea       CHECK (key IS NULL OR length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz,
    CHECK ((key IS NULL) = (erased_at IS NOT NULL))
);
