-- Bookings decided on a kept context. A booking needs its resource's kind and capacity, the
-- tenant's plan limits and add-ons and the tenant's personal-data key (`booking_context`);
-- reading them was a statement and a round trip per booking, as much Postgres time as the
-- booking's share of its append. The server now keeps them per tenant and resource, and every
-- booking states the stamp of the context it was decided on; the append refuses it (SL409
-- BOOKING_CONTEXT_CHANGED, nothing written) if the stamp has moved on, and the server reads the
-- context afresh and decides again.
--
-- The stamp: `version` counts the tenant's changes of what a booking is decided on (any
-- Subscription or Resource event, any change of its key row); `position` is the log position
-- of its latest such event, and `pending` counts such events inserted without a position that
-- the sequencer has not numbered yet. A context read with none pending and with the `billing`
-- and `bookings` read models at or past `position` reflects every change the stamp counts, so
-- the server keeps it only then (`settled`).
CREATE TABLE booking_context_stamps (
    tenant_id uuid    PRIMARY KEY,
    version   bigint  NOT NULL,
    position  bigint  NOT NULL,
    pending   integer NOT NULL DEFAULT 0 CHECK (pending >= 0)
);

INSERT INTO booking_context_stamps (tenant_id, version, position, pending)
SELECT e.tenant_id, 1, coalesce(max(e.position), 0), count(*) FILTER (WHERE e.position IS NULL) FROM events e
WHERE e.aggregate_type IN ('Subscription', 'Resource') AND e.tenant_id IS NOT NULL
GROUP BY e.tenant_id;

-- A context event appended (or, without a position, queued for the sequencer).
CREATE FUNCTION stamp_booking_context() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- The tenant is in the metadata of every event the server writes; the payload's is the
    -- fallback for events inserted any other way.
    tenant uuid := coalesce(NEW.tenant_id, (NEW.payload ->> 'tenant_id')::uuid);
    unnumbered integer := CASE WHEN NEW.position IS NULL THEN 1 ELSE 0 END;
BEGIN
    IF tenant IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO booking_context_stamps AS s (tenant_id, version, position, pending)
    VALUES (tenant, 1, coalesce(NEW.position, 0), unnumbered)
    ON CONFLICT (tenant_id) DO UPDATE
        SET version = s.version + 1,
            position = greatest(s.position, EXCLUDED.position),
            pending = s.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;

CREATE TRIGGER events_stamp_booking_context
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type IN ('Subscription', 'Resource'))
    EXECUTE FUNCTION stamp_booking_context();

-- A queued context event numbered by the sequencer.
CREATE FUNCTION stamp_booking_context_numbered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE booking_context_stamps
    SET position = greatest(position, NEW.position), pending = greatest(pending - 1, 0)
    WHERE tenant_id = coalesce(NEW.tenant_id, (NEW.payload ->> 'tenant_id')::uuid);
    RETURN NULL;
END $$;

CREATE TRIGGER events_stamp_booking_context_numbered
    AFTER UPDATE OF position ON events
    FOR EACH ROW
    WHEN (OLD.position IS NULL AND NEW.position IS NOT NULL AND NEW.aggregate_type IN ('Subscription', 'Resource'))
    EXECUTE FUNCTION stamp_booking_context_numbered();

-- A key made, erased or removed: the version moves, the position does not (no read model).
CREATE FUNCTION stamp_booking_key() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tenant uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    INSERT INTO booking_context_stamps AS s (tenant_id, version, position) VALUES (tenant, 1, 0)
    ON CONFLICT (tenant_id) DO UPDATE SET version = s.version + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER personal_data_keys_stamp_booking_context
    AFTER INSERT OR UPDATE OR DELETE ON personal_data_keys
    FOR EACH ROW
    EXECUTE FUNCTION stamp_booking_key();

-- The context as before, with the stamp it was read under and whether it may be kept.
DROP FUNCTION booking_context(uuid, uuid);
CREATE FUNCTION booking_context(p_resource uuid, p_tenant uuid)
RETURNS TABLE (kind text, capacity integer, limits jsonb, addons jsonb, has_key_row boolean, key bytea, version bigint, settled boolean)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT r.kind, r.capacity,
           (SELECT s.state -> 'plan' -> 'limits' FROM rm.subscriptions s WHERE s.tenant_id = p_tenant),
           (SELECT s.state -> 'addons' FROM rm.subscriptions s WHERE s.tenant_id = p_tenant),
           EXISTS (SELECT 1 FROM personal_data_keys k WHERE k.tenant_id = p_tenant),
           (SELECT k.key FROM personal_data_keys k WHERE k.tenant_id = p_tenant),
           coalesce(st.version, 0),
           st.tenant_id IS NULL OR (st.pending = 0 AND NOT EXISTS (
               SELECT 1 FROM projection_runs p
               WHERE p.name IN ('billing', 'bookings') AND p.status = 'live' AND p.position < st.position))
    FROM rm.resources r
    LEFT JOIN booking_context_stamps st ON st.tenant_id = p_tenant
    WHERE r.id = p_resource AND r.tenant_id = p_tenant;
END $$;

-- `append_events` with the guards: `p_guard_tenant`/`p_guard_version` per command
-- (`p_guard_group`), the stamp each was decided on. Otherwise as in 0016.
DROP FUNCTION append_events(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer[], text[], integer[]);
CREATE FUNCTION append_events(
    p_type text[], p_id text[], p_seq bigint[], p_event_type text[], p_version text[],
    p_payload jsonb[], p_metadata jsonb[], p_group integer[], p_claim text[], p_claim_group integer[],
    p_guard_tenant uuid[], p_guard_version bigint[], p_guard_group integer[]
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
            PERFORM claim_usage_keys(p_claim, ARRAY(SELECT u.i FROM unnest(p_type, p_id) AS u(t, i) WHERE u.t = 'Usage'));
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
                 FROM unnest(taken) AS t(g) WHERE t.g <> ALL (stale);
    RETURN QUERY SELECT t.g, NULL::bigint, 'SL409'::text, 'the booking''s resource, plan or key changed while it was decided'::text,
                        '{"code": "BOOKING_CONTEXT_CHANGED"}'::text
                 FROM unnest(stale) AS t(g);
    UPDATE event_log_head SET position = head;
END $$;
