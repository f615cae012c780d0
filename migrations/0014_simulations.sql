-- Price simulations (`POST /v1/admin/simulations`): each one's request, progress and result.
-- The simulation itself computes in memory and writes nothing else; this table is its own
-- bookkeeping, so that any instance can answer for any simulation.
--
-- `heartbeat_at` is the database's clock, moved by the instance running it at least every few
-- seconds; a simulation still `running` whose heartbeat is older than a minute lost its
-- instance and reads as `failed`.
CREATE TABLE simulations (
    id           uuid PRIMARY KEY,
    status       text             NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    progress     double precision NOT NULL DEFAULT 0,
    window_from  timestamptz      NOT NULL,
    window_to    timestamptz      NOT NULL,
    request      jsonb            NOT NULL,
    result       jsonb,
    error        text,
    created_at   timestamptz      NOT NULL,
    finished_at  timestamptz,
    heartbeat_at timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX simulations_created_idx ON simulations (created_at DESC, id DESC);
