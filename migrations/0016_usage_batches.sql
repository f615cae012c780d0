-- Usage batches as one event: `POST /v1/usage/batch` appends one `UsageBatchRecorded` event (on a
-- `UsageBatch` stream of its own) that holds every new fact of the batch, instead of one event per
-- fact. A batch of 1,000 facts is then one row in the log, one audit entry and one commit.
--
-- A fact is still counted once, ever, whichever way it came in. A fact recorded on its own is
-- its own stream `Usage/<tenant>:<key>` (the log's primary key makes it unique); a fact recorded
-- in a batch claims the same id in `usage_keys`, in the transaction that appends the batch.
-- `append_events` refuses, as the conflict `USAGE_KEY_RECORDED` (SL409), a command that claims
-- an id already claimed or already a stream, and a fact on its own whose id a batch claimed.
-- Every append holds the log head's lock, so these checks are exact under any concurrency.
-- The ids compare byte by byte (`COLLATE "C"`): they are keys, not text for people, and the
-- database's default collation would compare every probe through the locale's rules.
CREATE TABLE usage_keys (id text COLLATE "C" PRIMARY KEY);

-- Claims `p_claim` and checks both ways: no claimed id is a fact's own stream, and no fact on
-- its own (`p_single`: the ids of the `Usage` events being appended) was claimed by a batch.
-- Raises SL409 USAGE_KEY_RECORDED otherwise (an id claimed before included).
CREATE FUNCTION claim_usage_keys(p_claim text[], p_single text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    claimed bigint;
BEGIN
    IF cardinality(p_claim) > 0 THEN
        INSERT INTO usage_keys (id) SELECT unnest(p_claim) ON CONFLICT DO NOTHING;
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

-- `append_events` with the claims of each command (`p_claim`, grouped by `p_claim_group` as the
-- events are by `p_group`). Otherwise as in 0008: one multi-row INSERT in the common case; on a
-- refusal, the commands whose streams are taken are left out and the rest tried together, then
-- each command on its own, so that a refusal is that command's answer alone.
DROP FUNCTION append_events(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer[]);
CREATE FUNCTION append_events(
    p_type text[], p_id text[], p_seq bigint[], p_event_type text[], p_version text[],
    p_payload jsonb[], p_metadata jsonb[], p_group integer[], p_claim text[], p_claim_group integer[]
) RETURNS TABLE (grp integer, last_position bigint, err_state text, err_message text, err_detail text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
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
        IF cardinality(p_claim) > 0 OR 'Usage' = ANY (p_type) THEN
            PERFORM claim_usage_keys(p_claim, ARRAY(SELECT u.i FROM unnest(p_type, p_id) AS u(t, i) WHERE u.t = 'Usage'));
        END IF;
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
                PERFORM claim_usage_keys(
                    ARRAY(SELECT c.id FROM unnest(p_claim, p_claim_group) AS c(id, cg) WHERE c.cg <> ALL (taken)),
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
                 FROM unnest(taken) AS t(g);
    UPDATE event_log_head SET position = head;
END $$;

-- The facts of a batch share their event's position: `usage_records` tells them apart by
-- `item` (the fact's place in its event, from 1; a fact on its own is item 1), and a gauge's
-- latest value breaks ties on `occurred_at` by position, then item. Runs of the usage projection
-- built before this migration are brought to that shape in place (their rows are all facts on
-- their own, item 1), and the view over the live one shows the new column.
DO $$
DECLARE
    run record;
BEGIN
    FOR run IN SELECT r.schema_name, r.status FROM projection_runs r
               WHERE r.name = 'usage' AND EXISTS (SELECT 1 FROM information_schema.tables t
                                                  WHERE t.table_schema = r.schema_name AND t.table_name = 'usage_records') LOOP
        EXECUTE format('ALTER TABLE %I.usage_records ADD COLUMN IF NOT EXISTS item integer NOT NULL DEFAULT 1', run.schema_name);
        EXECUTE format('DROP INDEX IF EXISTS %I.usage_records_position', run.schema_name);
        EXECUTE format('CREATE UNIQUE INDEX usage_records_position ON %I.usage_records (position, item)', run.schema_name);
        IF run.status = 'live' THEN
            EXECUTE format('CREATE OR REPLACE VIEW rm.usage_records AS SELECT * FROM %I.usage_records', run.schema_name);
        END IF;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION quota_snapshot(p_tenant uuid, p_month timestamptz, p_next_month timestamptz)
RETURNS TABLE (limits jsonb, addons jsonb, billing_period text, period_start timestamptz, period_end timestamptz,
               bookings bigint, events bigint, users bigint, api_calls bigint, storage_bytes bigint, last_position bigint)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- Six scans, each joined once (starting a plan's scans is most of a call's cost): the
    -- subscription, the three counters in one, the hourly totals, the facts of the period's first
    -- and last hours in one (each sum filtered on its own, so a period within one hour counts
    -- its facts once), the storage gauge and the last position.
    RETURN QUERY
    SELECT s.limits, s.addons, s.billing_period, h.ps, h.pe, c.bookings, c.events, c.users,
           hourly.total + edges.last_hour - edges.first_hour, gauge.quantity, last.position
    FROM (SELECT NULL) AS one
    LEFT JOIN (SELECT sub.state -> 'plan' -> 'limits' AS limits, sub.state -> 'addons' AS addons,
                      sub.state ->> 'billing_period' AS billing_period, sub.current_period_start, sub.current_period_end
               FROM rm.subscriptions sub WHERE sub.tenant_id = p_tenant) AS s ON true
    CROSS JOIN LATERAL (SELECT coalesce(s.current_period_start, p_month) AS ps, coalesce(s.current_period_end, p_next_month) AS pe,
                               date_trunc('hour', coalesce(s.current_period_start, p_month), 'UTC') AS first_hour,
                               date_trunc('hour', coalesce(s.current_period_end, p_next_month), 'UTC') AS last_hour) AS h
    CROSS JOIN LATERAL (SELECT max(q.used) FILTER (WHERE q.metric = 'bookings_per_month' AND q.period_start = p_month) AS bookings,
                               max(q.used) FILTER (WHERE q.metric = 'events' AND q.period_start = 'epoch') AS events,
                               max(q.used) FILTER (WHERE q.metric = 'users' AND q.period_start = 'epoch') AS users
                        FROM quota_counters q
                        WHERE q.tenant_id = p_tenant AND q.metric IN ('bookings_per_month', 'events', 'users')) AS c
    CROSS JOIN LATERAL (SELECT coalesce(sum(u.total), 0)::bigint AS total FROM rm.usage_hourly u
                        WHERE u.tenant_id = p_tenant AND u.metric = 'api_calls' AND u.hour >= h.first_hour AND u.hour < h.last_hour) AS hourly
    CROSS JOIN LATERAL (SELECT coalesce(sum(r.quantity) FILTER (WHERE r.occurred_at >= h.first_hour AND r.occurred_at < h.ps), 0)::bigint AS first_hour,
                               coalesce(sum(r.quantity) FILTER (WHERE r.occurred_at >= h.last_hour AND r.occurred_at < h.pe), 0)::bigint AS last_hour
                        FROM rm.usage_records r
                        WHERE r.tenant_id = p_tenant AND r.metric = 'api_calls'
                          AND ((r.occurred_at >= h.first_hour AND r.occurred_at < h.ps) OR (r.occurred_at >= h.last_hour AND r.occurred_at < h.pe))) AS edges
    LEFT JOIN LATERAL (SELECT r.quantity FROM rm.usage_records r WHERE r.tenant_id = p_tenant AND r.metric = 'storage_bytes'
                       ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC LIMIT 1) AS gauge ON true
    CROSS JOIN LATERAL (SELECT max(e.position) AS position FROM events e WHERE e.tenant_id = p_tenant) AS last;
END $$;

-- A room's slot is held by its insert alone: the exclusion constraint on `booking_slots` finds an
-- overlap in the same index probe that inserts the slot (23P01, answered as 409
-- `BOOKING_OVERLAP`), so the look-up before it (0008) only probed the index twice per booking.
CREATE OR REPLACE FUNCTION hold_room(booking uuid, tenant uuid, resource uuid, starts timestamptz, ends timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO booking_slots (booking_id, tenant_id, resource_id, during) VALUES (booking, tenant, resource, tstzrange(starts, ends, '[)'))
    ON CONFLICT (booking_id) DO UPDATE SET during = EXCLUDED.during;
END $$;
