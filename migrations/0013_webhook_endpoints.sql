-- Outbound webhooks (contract: Outbound webhooks): endpoints, and one delivery per event and
-- endpoint.
--
-- Deliveries are created by one follower of the global log (checkpoint `webhooks` in
-- `relay_checkpoints`), in the same transaction as its checkpoint, so each event is fanned out
-- exactly once however the process dies. An endpoint receives the events after the log head
-- at its creation (`created_after`). Deliveries are sent by the dispatcher, the oldest pending
-- one of each endpoint first (log order per endpoint), each endpoint on its own.
CREATE TABLE webhook_endpoints (
    id             uuid        PRIMARY KEY,
    -- NULL: the platform's endpoint (every tenant's events); else the tenant's own.
    tenant_id      uuid,
    url            text        NOT NULL,
    event_types    text[]      NOT NULL,
    description    text,
    status         text        NOT NULL CHECK (status IN ('enabled', 'disabled')),
    -- The signing secret, sealed with the server's sealing key (not in the database): a dump
    -- of the database alone cannot sign.
    secret_sealed  text        NOT NULL,
    created_after  bigint      NOT NULL,
    -- Since when every attempt has failed (NULL after a success); 3 days of it disable the endpoint.
    failing_since  timestamptz,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, created_at, id);

CREATE TABLE webhook_deliveries (
    id                   uuid        PRIMARY KEY,
    endpoint_id          uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    -- The `webhook-id`: the same on every attempt.
    event_id             text        NOT NULL,
    event_type           text        NOT NULL,
    position             bigint      NOT NULL,
    -- The exact body sent (and signed) on every attempt.
    body                 text        NOT NULL,
    status               text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts             integer     NOT NULL DEFAULT 0,
    last_response_status integer,
    last_error           text,
    next_attempt_at      timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
-- The dispatcher's queue: each endpoint's pending deliveries in log order.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, position) WHERE status = 'pending';
-- The delivery log, newest first.
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

-- `quota.threshold_reached`: a threshold of a tenant's quota reached in a period, recorded once
-- (the event is sent once per metric, threshold and period, however many facts cross it at once).
CREATE TABLE webhook_quota_marks (
    tenant_id    uuid        NOT NULL,
    metric       text        NOT NULL,
    period_start timestamptz NOT NULL,
    threshold    integer     NOT NULL,
    reached_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, metric, period_start, threshold)
);
