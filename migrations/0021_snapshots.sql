-- Snapshots of aggregate state (issue 31): a cache that keeps a command's cost flat as its
-- stream grows. Not a source of truth: the events are. A snapshot holds the state after
-- `sequence` under the state's `version`; a reader ignores a snapshot of another version (or one
-- it cannot read) and replays the whole stream, so deleting any or all rows is always safe.
--
-- `state` is `json`, not `jsonb`: it is only ever written and read whole, and `json` keeps the
-- text as sent (no conversion either way).
--
-- Written by `commands::snapshots` after a commit, in batches, never in the command's own
-- transaction; an older snapshot never replaces a newer one.
CREATE TABLE snapshots (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence > 0),
    version        integer     NOT NULL,
    state          json        NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);
