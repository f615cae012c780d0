-- One sequencer round as one statement (one round trip instead of six; see
-- projections/src/sequencer.rs for why positions are assigned after commit).
--
-- The function is VOLATILE, so in READ COMMITTED each statement in it takes a fresh snapshot:
-- once the head's row lock is held (waiting for a concurrent round to commit), the DELETE sees
-- everything that round numbered, exactly as the former multi-statement transaction did.
-- A round with an empty queue neither locks nor writes (no transaction id, no WAL flush).
CREATE FUNCTION sequence_events(batch integer, OUT numbered bigint, OUT head bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events_unsequenced) THEN
        numbered := 0;
        SELECT position INTO head FROM event_log_head;
        RETURN;
    END IF;
    SELECT position INTO head FROM event_log_head FOR UPDATE;
    -- Up to the queue's batch-th smallest id, computed once and compared by range (an
    -- `IN (SELECT .. LIMIT n)` planned from statistics of an empty queue re-ran the subquery
    -- for every queued row after a bulk append).
    WITH d AS (
        DELETE FROM events_unsequenced
        WHERE id <= (SELECT max(id) FROM (SELECT id FROM events_unsequenced ORDER BY id LIMIT batch) first)
        RETURNING id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO taken FROM d;
    numbered := cardinality(taken);
    IF numbered > 0 THEN
        -- An array's elements are looked up by index (a CTE joined here was hash-joined with a
        -- sequential scan of all of `events` when statistics were stale).
        UPDATE events e SET position = head + t.n FROM unnest(taken) WITH ORDINALITY AS t(id, n) WHERE e.id = t.id;
        head := head + numbered;
        UPDATE event_log_head SET position = head;
    END IF;
END $$;
