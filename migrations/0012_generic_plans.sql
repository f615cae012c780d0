-- Hot statements planned once per connection, not once per call.
--
-- A statement sent with parameters is planned again for every execution while Postgres
-- thinks a plan for the values at hand beats a generic one, which it does for statements
-- with many subqueries and computed bounds such as the quota read: there planning cost about
-- twice the execution (0.93 ms a call with a plan per call, 0.33 ms with one generic plan,
-- measured with 2,000 prepared executions against the benchmark's database). These
-- functions keep one generic plan per connection (`plan_cache_mode` set for their own
-- statements only; every other statement of the server keeps Postgres's default).

-- Every quota of a tenant in one snapshot (a STABLE function's statements all read the
-- calling statement's snapshot): the subscription's limits, add-ons and billing period, the
-- metered period (the subscription's current period; `p_month`..`p_next_month` without one),
-- the bookings, event-resource and seat counters, the period's API calls (hourly totals of
-- the hours covering it, minus the facts of its first hour before its start, plus those of
-- its last hour: at most 744 rows a month however many calls), the latest storage gauge and
-- the position of the tenant's last event.
CREATE FUNCTION quota_snapshot(p_tenant uuid, p_month timestamptz, p_next_month timestamptz)
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
                       ORDER BY r.occurred_at DESC, r.position DESC LIMIT 1) AS gauge ON true
    CROSS JOIN LATERAL (SELECT max(e.position) AS position FROM events e WHERE e.tenant_id = p_tenant) AS last;
END $$;

-- The writer's append: its INSERT .. SELECT FROM unnest(..) is the same plan whatever the
-- arrays hold.
ALTER FUNCTION append_events(text[], text[], bigint[], text[], text[], jsonb[], jsonb[], integer[]) SET plan_cache_mode = force_generic_plan;

-- What a booking needs besides its request, in one read: the resource's kind and capacity
-- (only if it is the tenant's), the subscription's plan limits and add-ons (not its whole
-- state, which grows with every invoice), and the tenant's personal-data key row.
CREATE FUNCTION booking_context(p_resource uuid, p_tenant uuid)
RETURNS TABLE (kind text, capacity integer, limits jsonb, addons jsonb, has_key_row boolean, key bytea)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT r.kind, r.capacity,
           (SELECT s.state -> 'plan' -> 'limits' FROM rm.subscriptions s WHERE s.tenant_id = p_tenant),
           (SELECT s.state -> 'addons' FROM rm.subscriptions s WHERE s.tenant_id = p_tenant),
           EXISTS (SELECT 1 FROM personal_data_keys k WHERE k.tenant_id = p_tenant),
           (SELECT k.key FROM personal_data_keys k WHERE k.tenant_id = p_tenant)
    FROM rm.resources r WHERE r.id = p_resource AND r.tenant_id = p_tenant;
END $$;
