-- Invariants that span aggregates, checked and written atomically with the append.
--
-- A booking is its own aggregate, so "no two confirmed bookings of a room overlap", "an event
-- never sells more seats than its capacity" and "at most N bookings a month" cannot be checked
-- by any one aggregate. Instead the trigger below applies each booking event to these tables
-- in the very transaction that appends it: the exclusion constraint and the guarded updates
-- (row locks) decide races between concurrent requests, and a refusal aborts the whole append
-- with a SQLSTATE of class SL (commands/src/error.rs maps it to 409 or 429). The limits the
-- trigger enforces travel in the event payload, computed by the command from the plan.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- How much of a limited quantity a tenant has used in a period ('epoch' for standing counts
-- such as event resources).
CREATE TABLE quota_counters (
    tenant_id    uuid        NOT NULL,
    metric       text        NOT NULL,
    period_start timestamptz NOT NULL,
    used         bigint      NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, metric, period_start)
);

-- The time each confirmed room booking holds.
CREATE TABLE booking_slots (
    booking_id  uuid      PRIMARY KEY,
    tenant_id   uuid      NOT NULL,
    resource_id uuid      NOT NULL,
    during      tstzrange NOT NULL,
    EXCLUDE USING gist (resource_id WITH =, during WITH &&)
);

-- Seats sold per event resource.
CREATE TABLE event_seats (
    resource_id uuid   PRIMARY KEY,
    sold        bigint NOT NULL CHECK (sold >= 0)
);

-- Takes one unit of `metric` for the period, unless that would pass `quota_limit` (NULL:
-- unlimited), in which case the append fails with SL429 QUOTA_EXCEEDED.
CREATE FUNCTION claim_quota(tenant uuid, quota_metric text, period timestamptz, quota_limit bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    current_used bigint;
BEGIN
    INSERT INTO quota_counters (tenant_id, metric, period_start, used) VALUES (tenant, quota_metric, period, 0)
    ON CONFLICT DO NOTHING;
    UPDATE quota_counters SET used = used + 1
    WHERE tenant_id = tenant AND metric = quota_metric AND period_start = period
      AND (quota_limit IS NULL OR used < quota_limit);
    IF NOT FOUND THEN
        SELECT used INTO current_used FROM quota_counters WHERE tenant_id = tenant AND metric = quota_metric AND period_start = period;
        RAISE EXCEPTION 'the plan allows % % and % are used', quota_limit, quota_metric, current_used
            USING ERRCODE = 'SL429',
                  DETAIL = json_build_object('code', 'QUOTA_EXCEEDED', 'metric', quota_metric, 'limit', quota_limit, 'used', current_used)::text;
    END IF;
END $$;

CREATE FUNCTION hold_room(booking uuid, tenant uuid, resource uuid, starts timestamptz, ends timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO booking_slots (booking_id, tenant_id, resource_id, during) VALUES (booking, tenant, resource, tstzrange(starts, ends, '[)'))
    ON CONFLICT (booking_id) DO UPDATE SET during = EXCLUDED.during;
EXCEPTION WHEN exclusion_violation THEN
    RAISE EXCEPTION 'the room is already booked for part of that time'
        USING ERRCODE = 'SL409',
              DETAIL = json_build_object('code', 'BOOKING_OVERLAP', 'resource_id', resource, 'starts_at', starts, 'ends_at', ends)::text;
END $$;

CREATE FUNCTION apply_booking_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    p jsonb := NEW.payload;
    booking uuid := NEW.aggregate_id::uuid;
    tenant uuid := (p ->> 'tenant_id')::uuid;
    resource uuid := (p ->> 'resource_id')::uuid;
    seats bigint := (p ->> 'seats')::bigint;
    sold_now bigint;
BEGIN
    IF NEW.event_type = 'BookingConfirmed' THEN
        IF p ->> 'resource_kind' = 'room' THEN
            PERFORM hold_room(booking, tenant, resource, (p ->> 'starts_at')::timestamptz, (p ->> 'ends_at')::timestamptz);
        ELSE
            INSERT INTO event_seats (resource_id, sold) VALUES (resource, 0) ON CONFLICT DO NOTHING;
            UPDATE event_seats SET sold = sold + seats WHERE resource_id = resource AND sold + seats <= (p ->> 'capacity_limit')::bigint;
            IF NOT FOUND THEN
                SELECT sold INTO sold_now FROM event_seats WHERE resource_id = resource;
                RAISE EXCEPTION 'only % of % seats are left', (p ->> 'capacity_limit')::bigint - sold_now, (p ->> 'capacity_limit')::bigint
                    USING ERRCODE = 'SL409',
                          DETAIL = json_build_object('code', 'CAPACITY_EXCEEDED', 'resource_id', resource, 'capacity', (p ->> 'capacity_limit')::bigint,
                                                     'sold', sold_now, 'requested', seats)::text;
            END IF;
        END IF;
        PERFORM claim_quota(tenant, 'bookings_per_month', (p ->> 'quota_period_start')::timestamptz, (p ->> 'quota_limit')::bigint);
    ELSIF NEW.event_type = 'BookingRescheduled' AND p ->> 'resource_kind' = 'room' THEN
        PERFORM hold_room(booking, tenant, resource, (p ->> 'starts_at')::timestamptz, (p ->> 'ends_at')::timestamptz);
    ELSIF NEW.event_type = 'BookingCancelled' THEN
        DELETE FROM booking_slots WHERE booking_id = booking;
        IF p ->> 'resource_kind' = 'event' THEN
            UPDATE event_seats SET sold = sold - seats WHERE resource_id = resource;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_apply_booking
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Booking')
    EXECUTE FUNCTION apply_booking_event();

-- Event resources count against the plan's `events` limit.
CREATE FUNCTION apply_resource_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'ResourceCreated' AND NEW.payload ->> 'kind' = 'event' THEN
        PERFORM claim_quota((NEW.payload ->> 'tenant_id')::uuid, 'events', 'epoch'::timestamptz, (NEW.payload ->> 'events_limit')::bigint);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_apply_resource
    AFTER INSERT ON events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'Resource')
    EXECUTE FUNCTION apply_resource_event();
