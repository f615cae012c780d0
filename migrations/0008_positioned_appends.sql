-- Appends that carry their position: the server's writer numbers events in the transaction
-- that appends them, so its events are written once (no queue row, no UPDATE by the
-- sequencer) and a command knows its position when it commits.
--
-- `append_events` takes the head's row lock first and holds it until its (autocommit)
-- statement commits, so the positions it hands out are above every position already
-- committed and become visible together with the head that covers them. The sequencer takes
-- the same lock for its rounds, so the two never interleave: positions stay gap-free and
-- strictly increasing in the order they became visible. Rows inserted any other way (a
-- migration, a script, an operator's INSERT) still have no position and are numbered by the
-- sequencer after they commit, exactly as before; only those are queued.
--
-- One call appends the events of many commands (the writer coalesces concurrent requests),
-- grouped by `p_group` (one group per command, all or nothing). Each group gets its own
-- answer: the last position it was given, or why it was refused. A group whose
-- `(aggregate_type, aggregate_id, sequence)` is taken lost an optimistic-concurrency race
-- (23505, nothing of it written); a group that a trigger refuses (SLxxx: overlapping booking,
-- seats, quota) gets that error; neither fails its neighbours.

DROP TRIGGER events_enqueue ON events;
CREATE TRIGGER events_enqueue AFTER INSERT ON events FOR EACH ROW WHEN (NEW.position IS NULL) EXECUTE FUNCTION events_enqueue();

CREATE FUNCTION append_events(
    p_type text[], p_id text[], p_seq bigint[], p_event_type text[], p_version text[],
    p_payload jsonb[], p_metadata jsonb[], p_group integer[]
) RETURNS TABLE (grp integer, last_position bigint, err_state text, err_message text, err_detail text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head bigint;
    taken integer[] := '{}';
    written boolean := false;
    g integer;
    n bigint;
    st text;
    msg text;
    det text;
BEGIN
    -- The lock first: in READ COMMITTED every later statement of this VOLATILE function takes
    -- a fresh snapshot, so it sees every append committed before (every appender waits here),
    -- and nobody can commit an append until this one has.
    SELECT h.position INTO head FROM event_log_head h FOR UPDATE;

    -- The common case: every command's events in one multi-row INSERT.
    BEGIN
        INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
        SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + u.n
        FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata)
             WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, n)
        ORDER BY u.n;
        written := true;
    EXCEPTION WHEN OTHERS THEN
        written := false;
    END;

    IF NOT written THEN
        -- Something was refused. First leave out the commands whose streams are taken (lost
        -- an optimistic-concurrency race: one primary-key probe per event, LATERAL .. LIMIT 1
        -- so the planner cannot turn it into a hash join over the whole log) and try the rest
        -- together again.
        SELECT coalesce(array_agg(DISTINCT u.g), '{}') INTO taken
        FROM unnest(p_type, p_id, p_seq, p_group) AS u(t, i, s, g)
        CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.aggregate_type = u.t AND e.aggregate_id = u.i AND e.sequence = u.s LIMIT 1) AS hit;
        IF cardinality(taken) > 0 THEN
            BEGIN
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
                SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + row_number() OVER (ORDER BY u.n)
                FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata, p_group)
                     WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, gg, n)
                WHERE u.gg <> ALL (taken)
                ORDER BY u.n;
                written := true;
            EXCEPTION WHEN OTHERS THEN
                written := false;
            END;
        END IF;
    END IF;

    IF written THEN
        RETURN QUERY
            SELECT x.g, head + max(x.rn), NULL::text, NULL::text, NULL::text
            FROM (SELECT u.g, row_number() OVER (ORDER BY u.n) AS rn
                  FROM unnest(p_group) WITH ORDINALITY AS u(g, n) WHERE u.g <> ALL (taken)) x
            GROUP BY x.g;
        SELECT count(*) INTO n FROM unnest(p_group) AS u(g) WHERE u.g <> ALL (taken);
        head := head + n;
    ELSE
        -- A trigger refused one of them (an overlapping booking, seats, a quota): each command
        -- on its own (a subtransaction each), so that the refusal is that command's answer alone.
        FOR g IN SELECT DISTINCT u.g FROM unnest(p_group) AS u(g) WHERE u.g <> ALL (taken) ORDER BY u.g LOOP
            BEGIN
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
                SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + row_number() OVER (ORDER BY u.n)
                FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata, p_group)
                     WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, gg, n)
                WHERE u.gg = g
                ORDER BY u.n;
                GET DIAGNOSTICS n = ROW_COUNT;
                head := head + n;
                grp := g; last_position := head; err_state := NULL; err_message := NULL; err_detail := NULL;
                RETURN NEXT;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
                grp := g; last_position := NULL; err_state := st; err_message := msg; err_detail := det;
                RETURN NEXT;
            END;
        END LOOP;
    END IF;

    RETURN QUERY SELECT t.g, NULL::bigint, '23505'::text, 'the aggregate was appended to concurrently'::text, NULL::text
                 FROM unnest(taken) AS t(g);
    UPDATE event_log_head SET position = head;
END $$;

-- Rate limits are kept in each instance's memory now (api/src/rate_limit.rs).
DROP TABLE rate_buckets;

-- The booking trigger's helpers, cheaper per booking: under the writer every append holds the
-- head lock, so checking for an overlap before inserting the slot is exact, and saves the
-- subtransaction the exception handler cost for every booking (dozens share one append now).
-- The exclusion constraint stays as the last word for rows inserted any other way.
CREATE OR REPLACE FUNCTION hold_room(booking uuid, tenant uuid, resource uuid, starts timestamptz, ends timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM booking_slots
               WHERE resource_id = resource AND during && tstzrange(starts, ends, '[)') AND booking_id <> booking) THEN
        RAISE EXCEPTION 'the room is already booked for part of that time'
            USING ERRCODE = 'SL409',
                  DETAIL = json_build_object('code', 'BOOKING_OVERLAP', 'resource_id', resource, 'starts_at', starts, 'ends_at', ends)::text;
    END IF;
    INSERT INTO booking_slots (booking_id, tenant_id, resource_id, during) VALUES (booking, tenant, resource, tstzrange(starts, ends, '[)'))
    ON CONFLICT (booking_id) DO UPDATE SET during = EXCLUDED.during;
END $$;

-- One upsert instead of an insert and an update.
CREATE OR REPLACE FUNCTION claim_quota(tenant uuid, quota_metric text, period timestamptz, quota_limit bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_used bigint;
BEGIN
    INSERT INTO quota_counters AS q (tenant_id, metric, period_start, used)
    SELECT tenant, quota_metric, period, 1 WHERE quota_limit IS NULL OR quota_limit > 0
    ON CONFLICT (tenant_id, metric, period_start) DO UPDATE SET used = q.used + 1
        WHERE quota_limit IS NULL OR q.used < quota_limit;
    IF NOT FOUND THEN
        SELECT used INTO current_used FROM quota_counters WHERE tenant_id = tenant AND metric = quota_metric AND period_start = period;
        RAISE EXCEPTION 'the plan allows % % and % are used', quota_limit, quota_metric, coalesce(current_used, 0)
            USING ERRCODE = 'SL429',
                  DETAIL = json_build_object('code', 'QUOTA_EXCEEDED', 'metric', quota_metric, 'limit', quota_limit, 'used', coalesce(current_used, 0))::text;
    END IF;
END $$;
