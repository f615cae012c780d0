-- The positions of the log followers that are not projections (the NATS relay per stream,
-- the webhook fan-out, the quota alerts), kept by one helper (projections/src/checkpoint.rs).
-- The table held the relay's alone when it was made (0006), hence its old name.
ALTER TABLE relay_checkpoints RENAME TO follower_checkpoints;
ALTER INDEX relay_checkpoints_pkey RENAME TO follower_checkpoints_pkey;
COMMENT ON TABLE follower_checkpoints IS
    'Log followers other than projections: the last position each has handled (see projections/src/checkpoint.rs).';
