-- The event store: postgres-es's `events` table, extended with one global order.
--
-- postgres-es inserts (aggregate_type, aggregate_id, sequence, event_type, event_version,
-- payload, metadata) and orders only within one aggregate. Everything else here is ours:
--
-- * `id`: allocated at insert time. Allocation order is NOT commit order (a transaction that
--   takes id 7 can commit after one that took id 8), so nobody may read the log by `id`.
-- * `position`: the public, gap-free global order. It is assigned after commit by the
--   sequencer (projections/src/sequencer.rs) to committed rows only, in batches, under one
--   advisory lock, always above every position already assigned. A reader that has seen
--   position P can therefore never later find a row below P, a rolled-back insert never
--   becomes visible and so never holds anybody up, and no open transaction stalls readers.
-- * `tenant_id`, `recorded_at`: for tenant-scoped reads and audits without parsing json.
CREATE TABLE events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 0),
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    position       bigint,
    tenant_id      uuid        GENERATED ALWAYS AS ((metadata ->> 'tenant_id')::uuid) STORED,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_id_key ON events (id);
CREATE UNIQUE INDEX events_position_key ON events (position);
-- The sequencer's work queue: the ids of events still waiting for a position. A table of its
-- own rather than a partial index on `events`: such an index keeps a dead entry for every
-- event ever numbered until `events` is vacuumed (after 20 % of a large table), so finding
-- the waiting events would get slower as history grows. This table stays as small as the
-- events of the last few moments, and is vacuumed eagerly because it is tiny.
CREATE TABLE events_unsequenced (id bigint PRIMARY KEY)
    WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

CREATE FUNCTION events_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events_unsequenced (id) VALUES (NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER events_enqueue AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION events_enqueue();
CREATE INDEX events_tenant_position_idx ON events (tenant_id, position);

-- Events are append-only. The only update allowed is the sequencer's one-time assignment of
-- `position`; anything else (and any delete or truncate) is refused by the database itself.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER events_append_only_update
    BEFORE UPDATE ON events
    FOR EACH ROW
    WHEN (OLD.position IS NOT NULL
          OR NEW.position IS NULL
          OR (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence, NEW.event_type, NEW.event_version,
              NEW.payload, NEW.metadata, NEW.id, NEW.recorded_at)
             IS DISTINCT FROM
             (OLD.aggregate_type, OLD.aggregate_id, OLD.sequence, OLD.event_type, OLD.event_version,
              OLD.payload, OLD.metadata, OLD.id, OLD.recorded_at))
    EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_append_only_delete
    BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Every projection run (a projection at one version, built into its own schema) and its
-- checkpoint. The checkpoint is updated in the same transaction as the run's read-model
-- writes, so an event is applied exactly once however the process dies.
CREATE TABLE projection_runs (
    name                text        NOT NULL,
    generation          integer     NOT NULL,
    version             integer     NOT NULL,
    schema_name         text        NOT NULL UNIQUE,
    position            bigint      NOT NULL DEFAULT 0,
    status              text        NOT NULL CHECK (status IN ('building', 'live', 'retired')),
    last_error          text,
    last_error_position bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

-- At most one live run per projection.
CREATE UNIQUE INDEX projection_runs_one_live ON projection_runs (name) WHERE status = 'live';

-- Read models are served through stable views in this schema, which always point at the
-- live run's tables; a rebuild swaps them in one transaction.
CREATE SCHEMA rm;

-- The sequencer's state: the highest position assigned. Its row lock serialises sequencers
-- (one per server process), so positions are handed out by one of them at a time.
CREATE TABLE event_log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL
);
INSERT INTO event_log_head (position) VALUES (0);
