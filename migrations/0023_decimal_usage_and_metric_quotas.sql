-- Usage quantities are decimals (up to 6 places) and a quota answers for every metric a plan
-- names (issue 34). `quota_snapshot` (0016) now
--   * adds the period's API calls as numerics and rounds the total once (half away from zero,
--     the built-ins' rule), where each part was cast to bigint;
--   * rounds the storage gauge's latest value;
--   * answers, for every metric the subscription's plan charges other than the built-ins that
--     have quota lines of their own (`api_calls`, `storage_bytes`), the parts of its period's
--     aggregate: sum, largest, latest and distinct values (`metered`, one object per metric
--     with facts in the period; `charged`, every such metric).
--     The caller picks the figure its definition names and rounds it (commands/src/quota.rs).
-- The usage projection's tables hold numeric quantities from its version 4 on; this function
-- reads them through `rm.*` either way.
DROP FUNCTION IF EXISTS quota_snapshot(uuid, timestamptz, timestamptz);

CREATE FUNCTION quota_snapshot(p_tenant uuid, p_month timestamptz, p_next_month timestamptz)
RETURNS TABLE (limits jsonb, addons jsonb, billing_period text, period_start timestamptz, period_end timestamptz,
               bookings bigint, events bigint, users bigint, api_calls bigint, storage_bytes bigint, last_position bigint,
               charged text[], metered jsonb)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    SELECT s.limits, s.addons, s.billing_period, h.ps, h.pe, c.bookings, c.events, c.users,
           round(hourly.total + edges.last_hour - edges.first_hour)::bigint, round(gauge.quantity::numeric)::bigint, last.position,
           s.charges, charged.metered
    FROM (SELECT NULL) AS one
    LEFT JOIN (SELECT sub.state -> 'plan' -> 'limits' AS limits, sub.state -> 'addons' AS addons,
                      sub.state ->> 'billing_period' AS billing_period, sub.current_period_start, sub.current_period_end,
                      ARRAY(SELECT DISTINCT ch ->> 'metric' FROM jsonb_array_elements(coalesce(sub.state -> 'plan' -> 'charges', '[]'::jsonb)) AS ch
                            WHERE ch ->> 'metric' NOT IN ('api_calls', 'storage_bytes')) AS charges
               FROM rm.subscriptions sub WHERE sub.tenant_id = p_tenant) AS s ON true
    CROSS JOIN LATERAL (SELECT coalesce(s.current_period_start, p_month) AS ps, coalesce(s.current_period_end, p_next_month) AS pe,
                               date_trunc('hour', coalesce(s.current_period_start, p_month), 'UTC') AS first_hour,
                               date_trunc('hour', coalesce(s.current_period_end, p_next_month), 'UTC') AS last_hour) AS h
    CROSS JOIN LATERAL (SELECT max(q.used) FILTER (WHERE q.metric = 'bookings_per_month' AND q.period_start = p_month) AS bookings,
                               max(q.used) FILTER (WHERE q.metric = 'events' AND q.period_start = 'epoch') AS events,
                               max(q.used) FILTER (WHERE q.metric = 'users' AND q.period_start = 'epoch') AS users
                        FROM quota_counters q
                        WHERE q.tenant_id = p_tenant AND q.metric IN ('bookings_per_month', 'events', 'users')) AS c
    CROSS JOIN LATERAL (SELECT coalesce(sum(u.total), 0)::numeric AS total FROM rm.usage_hourly u
                        WHERE u.tenant_id = p_tenant AND u.metric = 'api_calls' AND u.hour >= h.first_hour AND u.hour < h.last_hour) AS hourly
    CROSS JOIN LATERAL (SELECT coalesce(sum(r.quantity) FILTER (WHERE r.occurred_at >= h.first_hour AND r.occurred_at < h.ps), 0)::numeric AS first_hour,
                               coalesce(sum(r.quantity) FILTER (WHERE r.occurred_at >= h.last_hour AND r.occurred_at < h.pe), 0)::numeric AS last_hour
                        FROM rm.usage_records r
                        WHERE r.tenant_id = p_tenant AND r.metric = 'api_calls'
                          AND ((r.occurred_at >= h.first_hour AND r.occurred_at < h.ps) OR (r.occurred_at >= h.last_hour AND r.occurred_at < h.pe))) AS edges
    LEFT JOIN LATERAL (SELECT r.quantity FROM rm.usage_records r WHERE r.tenant_id = p_tenant AND r.metric = 'storage_bytes'
                       ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC LIMIT 1) AS gauge ON true
    LEFT JOIN LATERAL (SELECT jsonb_agg(jsonb_build_object('metric', m.metric, 'sum', m.total, 'max', m.largest, 'last', m.latest, 'distinct', m.distinct_values)) AS metered
                       FROM (SELECT r.metric, sum(r.quantity) AS total, max(r.quantity) AS largest,
                                    (array_agg(r.quantity ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC))[1] AS latest,
                                    count(DISTINCT r.value) FILTER (WHERE r.value IS NOT NULL) AS distinct_values
                             FROM rm.usage_records r
                             WHERE cardinality(s.charges) > 0 AND r.tenant_id = p_tenant AND r.metric = ANY(s.charges)
                               AND r.occurred_at >= h.ps AND r.occurred_at < h.pe
                             GROUP BY r.metric) AS m) AS charged ON true
    CROSS JOIN LATERAL (SELECT max(e.position) AS position FROM events e WHERE e.tenant_id = p_tenant) AS last;
END $$;

-- Runs of the usage projection built before this migration (version 3) get the `value` column
-- (empty: no fact of theirs counts distinct values) so that the function above reads them until
-- version 4 (numeric quantities, `value`, a bucket's largest value) is built and goes live; the
-- view over the live run shows the new column.
DO $$
DECLARE
    run record;
BEGIN
    FOR run IN SELECT r.schema_name, r.status FROM projection_runs r
               WHERE r.name = 'usage' AND EXISTS (SELECT 1 FROM information_schema.tables t
                                                  WHERE t.table_schema = r.schema_name AND t.table_name = 'usage_records') LOOP
        EXECUTE format('ALTER TABLE %I.usage_records ADD COLUMN IF NOT EXISTS value text', run.schema_name);
        IF run.status = 'live' THEN
            EXECUTE format('CREATE OR REPLACE VIEW rm.usage_records AS SELECT * FROM %I.usage_records', run.schema_name);
        END IF;
    END LOOP;
END $$;
