-- The event relay's checkpoint per JetStream stream (see projections/src/relay.rs).
CREATE TABLE relay_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);
