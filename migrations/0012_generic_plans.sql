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
    RETURN QUERY
    WITH s AS (
        SELECT state -> 'plan' -> 'limits' AS limits, state -> 'addons' AS addons, state ->> 'billing_period' AS billing_period,
               current_period_start, current_period_end
        FROM rm.subscriptions WHERE tenant_id = p_tenant
    ),
    p AS (
        SELECT coalesce((SELECT current_period_start FROM s), p_month) AS ps, coalesce((SELECT current_period_end FROM s), p_next_month) AS pe
    ),
    h AS (SELECT p.ps, p.pe, date_trunc('hour', p.ps, 'UTC') AS first_hour, date_trunc('hour', p.pe, 'UTC') AS last_hour FROM p)
    SELECT (SELECT s.limits FROM s), (SELECT s.addons FROM s), (SELECT s.billing_period FROM s), h.ps, h.pe,
           (SELECT q.used FROM quota_counters q WHERE q.tenant_id = p_tenant AND q.metric = 'bookings_per_month' AND q.period_start = p_month),
           (SELECT q.used FROM quota_counters q WHERE q.tenant_id = p_tenant AND q.metric = 'events' AND q.period_start = 'epoch'),
           (SELECT q.used FROM quota_counters q WHERE q.tenant_id = p_tenant AND q.metric = 'users' AND q.period_start = 'epoch'),
           (SELECT coalesce(sum(u.total), 0)::bigint FROM rm.usage_hourly u
            WHERE u.tenant_id = p_tenant AND u.metric = 'api_calls' AND u.hour >= h.first_hour AND u.hour < h.last_hour)
           - (SELECT coalesce(sum(r.quantity), 0)::bigint FROM rm.usage_records r
              WHERE r.tenant_id = p_tenant AND r.metric = 'api_calls' AND r.occurred_at >= h.first_hour AND r.occurred_at < h.ps)
           + (SELECT coalesce(sum(r.quantity), 0)::bigint FROM rm.usage_records r
              WHERE r.tenant_id = p_tenant AND r.metric = 'api_calls' AND r.occurred_at >= h.last_hour AND r.occurred_at < h.pe),
           (SELECT r.quantity FROM rm.usage_records r WHERE r.tenant_id = p_tenant AND r.metric = 'storage_bytes'
            ORDER BY r.occurred_at DESC, r.position DESC LIMIT 1),
           (SELECT max(e.position) FROM events e WHERE e.tenant_id = p_tenant)
    FROM h;
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
