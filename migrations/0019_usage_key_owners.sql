-- Usage keys remember which batch claimed them, so that a key sent again with another fact is
-- told from a resend whichever way it came in (API.md, *Idempotency*: the same key with another
-- metric, quantity or `occurred_at` is 409 IDEMPOTENCY_KEY_REUSED, not a duplicate). A key's
-- fact is then one primary-key probe away: its own stream's first event, or its batch's event.
--
-- `batch` is the aggregate id of the `UsageBatch` stream whose event claimed the key (NULL for
-- keys claimed before this migration: those are answered as duplicates, as they were).
ALTER TABLE usage_keys ADD COLUMN batch text COLLATE "C";

-- As in 0016, with each claim's owner (`p_owner`, the batch's aggregate id, in step with `p_claim`).
DROP FUNCTION claim_usage_keys(text[], text[]);
CREATE FUNCTION claim_usage_keys(p_claim text[], p_owner text[], p_single text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    claimed bigint;
BEGIN
    IF cardinality(p_claim) > 0 THEN
        INSERT INTO usage_keys (id, batch) SELECT c.id, c.owner FROM unnest(p_claim, p_owner) AS c(id, owner) ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        IF claimed < cardinality(p_claim) OR EXISTS (SELECT 1 FROM unnest(p_claim) AS c(id)
                   CROSS JOIN LATERAL (SELECT 1 FROM events e
                                       WHERE e.aggregate_type = 'Usage' AND e.aggregate_id = c.id AND e.sequence = 1 LIMIT 1) AS hit) THEN
            RAISE EXCEPTION 'a usage fact with this idempotency key was recorded before'
                USING ERRCODE = 'SL409', DETAIL = '{"code": "USAGE_KEY_RECORDED"}';
        END IF;
    END IF;
    IF cardinality(p_single) > 0 AND EXISTS (
        SELECT 1 FROM unnest(p_single) AS s(id)
        CROSS JOIN LATERAL (SELECT 1 FROM usage_keys k WHERE k.id = s.id LIMIT 1) AS hit) THEN
        RAISE EXCEPTION 'a usage fact with this idempotency key was recorded before'
            USING ERRCODE = 'SL409', DETAIL = '{"code": "USAGE_KEY_RECORDED"}';
    END IF;
END $$;

-- `append_events` with `p_claim_owner` (in step with `p_claim`). Otherwise as in 0017.
DROP FUNCTION append_events(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer[], text[], integer[], uuid[], bigint[], integer[]);
CREATE FUNCTION append_events(
    p_type text[], p_id text[], p_seq bigint[], p_event_type text[], p_version text[],
    p_payload jsonb[], p_metadata jsonb[], p_group integer[], p_claim text[], p_claim_group integer[],
    p_claim_owner text[], p_guard_tenant uuid[], p_guard_version bigint[], p_guard_group integer[]
) RETURNS TABLE (grp integer, last_position bigint, err_state text, err_message text, err_detail text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    head bigint;
    taken integer[] := '{}';
    stale integer[] := '{}';
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

    -- Commands decided on a booking context whose stamp has moved on since (the tenant's
    -- subscription, resources or key changed): refused, nothing of them written. Checked under
    -- the head's lock, so no context change can be appended between this check and the commit.
    IF cardinality(p_guard_group) > 0 THEN
        SELECT coalesce(array_agg(DISTINCT u.g), '{}') INTO stale
        FROM unnest(p_guard_tenant, p_guard_version, p_guard_group) AS u(t, v, g)
        LEFT JOIN booking_context_stamps s ON s.tenant_id = u.t
        WHERE coalesce(s.version, 0) <> u.v;
    END IF;

    -- The common case: every command's events in one multi-row INSERT.
    IF cardinality(stale) = 0 THEN BEGIN
        INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
        SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + u.n
        FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata)
             WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, n)
        ORDER BY u.n;
        IF cardinality(p_claim) > 0 OR 'Usage' = ANY (p_type) THEN
            PERFORM claim_usage_keys(p_claim, p_claim_owner, ARRAY(SELECT u.i FROM unnest(p_type, p_id) AS u(t, i) WHERE u.t = 'Usage'));
        END IF;
        written := true;
    EXCEPTION WHEN OTHERS THEN
        written := false;
    END; END IF;

    IF NOT written THEN
        -- Something was refused. First leave out the commands whose streams are taken (lost
        -- an optimistic-concurrency race: one primary-key probe per event, LATERAL .. LIMIT 1
        -- so the planner cannot turn it into a hash join over the whole log) and try the rest
        -- together again.
        SELECT coalesce(array_agg(DISTINCT u.g), '{}') INTO taken
        FROM unnest(p_type, p_id, p_seq, p_group) AS u(t, i, s, g)
        CROSS JOIN LATERAL (SELECT 1 FROM events e WHERE e.aggregate_type = u.t AND e.aggregate_id = u.i AND e.sequence = u.s LIMIT 1) AS hit;
        -- The stale ones are left out with them (and answered on their own below).
        taken := ARRAY(SELECT DISTINCT x FROM unnest(taken || stale) AS x);
        IF cardinality(taken) > 0 THEN
            BEGIN
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
                SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + row_number() OVER (ORDER BY u.n)
                FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata, p_group)
                     WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, gg, n)
                WHERE u.gg <> ALL (taken)
                ORDER BY u.n;
                PERFORM claim_usage_keys(
                    ARRAY(SELECT c.id FROM unnest(p_claim, p_claim_group) AS c(id, cg) WHERE c.cg <> ALL (taken)),
                    ARRAY(SELECT c.o FROM unnest(p_claim_owner, p_claim_group) AS c(o, cg) WHERE c.cg <> ALL (taken)),
                    ARRAY(SELECT u.i FROM unnest(p_type, p_id, p_group) AS u(t, i, gg) WHERE u.t = 'Usage' AND u.gg <> ALL (taken)));
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
        -- A trigger refused one of them (an overlapping booking, seats, a quota, a usage key):
        -- each command on its own (a subtransaction each), so that the refusal is that
        -- command's answer alone.
        FOR g IN SELECT DISTINCT u.g FROM unnest(p_group) AS u(g) WHERE u.g <> ALL (taken) ORDER BY u.g LOOP
            BEGIN
                INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
                SELECT u.t, u.i, u.s, u.et, u.ev, u.pl, u.md, head + row_number() OVER (ORDER BY u.n)
                FROM unnest(p_type, p_id, p_seq, p_event_type, p_version, p_payload, p_metadata, p_group)
                     WITH ORDINALITY AS u(t, i, s, et, ev, pl, md, gg, n)
                WHERE u.gg = g
                ORDER BY u.n;
                GET DIAGNOSTICS n = ROW_COUNT;
                PERFORM claim_usage_keys(
                    ARRAY(SELECT c.id FROM unnest(p_claim, p_claim_group) AS c(id, cg) WHERE c.cg = g),
                    ARRAY(SELECT c.o FROM unnest(p_claim_owner, p_claim_group) AS c(o, cg) WHERE c.cg = g),
                    ARRAY(SELECT u.i FROM unnest(p_type, p_id, p_group) AS u(t, i, gg) WHERE u.t = 'Usage' AND u.gg = g));
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
                 FROM unnest(taken) AS t(g) WHERE t.g <> ALL (stale);
    RETURN QUERY SELECT t.g, NULL::bigint, 'SL409'::text, 'the booking''s resource, plan or key changed while it was decided'::text,
                        '{"code": "BOOKING_CONTEXT_CHANGED"}'::text
                 FROM unnest(stale) AS t(g);
    UPDATE event_log_head SET position = head;
END $$;
