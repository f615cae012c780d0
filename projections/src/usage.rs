//! The `usage` projection: every accepted usage fact (`rm.usage_records`, summed by billing
//! and quota over exact instants) and hourly buckets (`rm.usage_hourly`, for time series).
//! Counters add up; for gauges (`storage_bytes`) a bucket keeps its latest value.
//!
//! Corrections (`UsageVoided`, `UsageAmended`) are kept in `rm.usage_corrections` (with the
//! fact's position, so that a replay of billing knows what was known when); a void fact leaves
//! `usage_records`, an amended one counts with its new quantity, and its hour's bucket is
//! counted again from the facts.

use async_trait::async_trait;
use domain::usage::{MetricKind, UsageBatchEvent, UsageEvent};
use sqlx::{PgConnection, PgPool};

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;

/// Builds `usage_records` and `usage_hourly`.
#[derive(Debug, Clone, Copy)]
pub struct UsageProjection;

#[async_trait]
impl Projection for UsageProjection {
    fn name(&self) -> &'static str {
        "usage"
    }

    /// 2: `usage_records` is keyed by the fact's position (was: tenant and idempotency key,
    /// which the log's own key on `<tenant>:<key>` streams already makes unique; a random text
    /// key made every projected fact an insert into a large, cold b-tree).
    /// 3: corrections (`usage_corrections`).
    /// 4: decimal quantities (numeric), a `unique_count` fact's `value`, a bucket's largest value.
    fn version(&self) -> i32 {
        4
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Usage", "UsageBatch", "UsageCorrection"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["usage_records", "usage_hourly", "usage_corrections"]
    }

    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        // A bucket's value as its metric aggregates: a counter's sum, a gauge's latest, a `max`
        // metric's largest; a `unique_count` metric's distinct values, counted from its facts
        // (distinct counts do not add up hour by hour).
        let bucket = |unit: &str| {
            format!(
                "SELECT tenant_id, metric, kind, date_trunc('{unit}', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                        CASE WHEN kind = 'gauge' THEN (array_agg(last_value ORDER BY last_at DESC))[1]::numeric
                             WHEN kind = 'max' THEN max(max_value)
                             ELSE sum(total) END AS value,
                        sum(facts)::bigint AS facts
                 FROM {{schema}}.usage_hourly WHERE kind <> 'unique' GROUP BY tenant_id, metric, kind, 4
                 UNION ALL
                 SELECT tenant_id, metric, kind, date_trunc('{unit}', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                        count(DISTINCT value)::numeric AS value, count(*)::bigint AS facts
                 FROM {{schema}}.usage_records WHERE kind = 'unique' GROUP BY tenant_id, metric, kind, 4"
            )
        };
        vec![("usage_hourly", bucket("hour")), ("usage_daily", bucket("day")), ("usage_monthly", bucket("month"))]
    }

    /// Unique by position (each fact once), and by tenant, metric and instant for billing,
    /// quotas and the export.
    fn deferred_indexes(&self) -> Vec<String> {
        vec![
            "CREATE UNIQUE INDEX IF NOT EXISTS usage_records_position ON {schema}.usage_records (position, item)".to_owned(),
            "CREATE INDEX IF NOT EXISTS usage_records_tenant_metric_occurred ON {schema}.usage_records (tenant_id, metric, occurred_at)"
                .to_owned(),
        ]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.usage_records (
                 tenant_id       uuid NOT NULL,
                 metric          text NOT NULL,
                 kind            text NOT NULL,
                 quantity        numeric NOT NULL,
                 idempotency_key text NOT NULL,
                 occurred_at     timestamptz NOT NULL,
                 recorded_at     timestamptz NOT NULL,
                 position        bigint NOT NULL,
                 item            integer NOT NULL DEFAULT 1,
                 value           text
             );
             CREATE TABLE {schema}.usage_hourly (
                 tenant_id  uuid NOT NULL,
                 metric     text NOT NULL,
                 kind       text NOT NULL,
                 hour       timestamptz NOT NULL,
                 total      numeric NOT NULL,
                 facts      bigint NOT NULL,
                 last_value numeric NOT NULL,
                 last_at    timestamptz NOT NULL,
                 max_value  numeric NOT NULL,
                 PRIMARY KEY (tenant_id, metric, hour)
             );
             CREATE TABLE {schema}.usage_corrections (
                 position          bigint PRIMARY KEY,
                 tenant_id         uuid NOT NULL,
                 idempotency_key   text NOT NULL,
                 metric            text NOT NULL,
                 kind              text NOT NULL,
                 occurred_at       timestamptz NOT NULL,
                 fact_position     bigint,
                 fact_item         integer,
                 correction        text NOT NULL,
                 previous_quantity numeric NOT NULL,
                 quantity          numeric NOT NULL,
                 previous_value    text,
                 value             text,
                 reason            text NOT NULL,
                 actor             text NOT NULL,
                 at                timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.usage_corrections (tenant_id, idempotency_key);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    /// One statement per batch, however many facts it holds, and no event leaves Postgres:
    /// the facts are read out of the log's payloads (a `UsageRecorded` is one fact, item 1; a
    /// `UsageBatchRecorded` holds many, items 1, 2, ... in its order, each payload read once),
    /// inserted, and folded into their hourly buckets (a bucket's latest value is the fact with
    /// the latest `occurred_at`, the later position and then the later item winning ties, as
    /// one-by-one application would leave it), upserted once per bucket. It reads the payloads
    /// exactly as [`Fact::read`] does; no upcaster applies to either event (a test holds that),
    /// so the stored payload is the current shape. (The type test is written `IS TRUE` so that
    /// it cannot be an index condition: the range is read through the position index alone,
    /// whatever the table's statistics say; see [`crate::log::read_range`].)
    async fn apply_range(
        &self,
        conn: &mut PgConnection,
        schema: &str,
        after: i64,
        upto: i64,
        _log: &PgPool,
    ) -> Result<(), ProjectionError> {
        sqlx::query(&format!("{FACTS} {FOLD}", FACTS = facts_in("position > $1 AND position <= $2"), FOLD = fold(schema)))
            .bind(after)
            .bind(upto)
            .execute(&mut *conn)
            .await?;
        // Corrections (rare) after the facts: a correction always follows its fact in the log.
        let corrections = crate::log::read_range(&mut *conn, after, upto, Some(&["UsageCorrection"])).await?;
        for event in &corrections {
            correct(conn, schema, event).await?;
        }
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type == "UsageCorrection" {
            return correct(conn, schema, event).await;
        }
        let facts = Fact::read(event)?;
        if facts.is_empty() {
            return Ok(());
        }
        let column = |f: fn(&Fact) -> String| facts.iter().map(f).collect::<Vec<_>>();
        sqlx::query(&format!(
            "WITH f AS (
                 SELECT u.tenant_id, u.metric, u.kind, u.quantity, u.idempotency_key, u.occurred_at, u.recorded_at, $8::bigint AS position, u.item::integer AS item, u.value
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::timestamptz[], $7::timestamptz[], $9::text[])
                      WITH ORDINALITY AS u(tenant_id, metric, kind, quantity, idempotency_key, occurred_at, recorded_at, value, item)
             ) {}",
            fold(schema)
        ))
        .bind(facts.iter().map(|f| f.tenant_id).collect::<Vec<_>>())
        .bind(column(|f| f.metric.clone()))
        .bind(column(|f| f.kind.to_owned()))
        .bind(facts.iter().map(|f| f.quantity).collect::<Vec<_>>())
        .bind(column(|f| f.idempotency_key.clone()))
        .bind(facts.iter().map(|f| f.occurred_at).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.recorded_at).collect::<Vec<_>>())
        .bind(event.position)
        .bind(facts.iter().map(|f| f.value.clone()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Applies a correction: kept in `usage_corrections` with the fact's position; the fact leaves
/// `usage_records` (void) or counts with its new quantity (amend); its hour's bucket is counted
/// again from the facts (a gauge's latest value may have been the one corrected).
async fn correct(conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
    use domain::usage::corrections::UsageCorrectionEvent as C;
    let correction: C = serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
    let (tenant_id, key, metric, kind, occurred_at, (previous, previous_value), amended, reason, actor, at, name) = match correction {
        C::UsageVoided { tenant_id, idempotency_key, metric, kind, occurred_at, previous_quantity, previous_value, reason, actor, at } => {
            (tenant_id, idempotency_key, metric, kind, occurred_at, (previous_quantity, previous_value), None, reason, actor, at, "void")
        }
        C::UsageAmended {
            tenant_id,
            idempotency_key,
            metric,
            kind,
            occurred_at,
            previous_quantity,
            quantity,
            previous_value,
            value,
            reason,
            actor,
            at,
        } => (
            tenant_id,
            idempotency_key,
            metric,
            kind,
            occurred_at,
            (previous_quantity, previous_value),
            Some((quantity, value)),
            reason,
            actor,
            at,
            "amend",
        ),
    };
    let kind = kind.as_str();
    let (quantity, value) = match &amended {
        Some((q, v)) => (*q, v.clone()),
        None => (rust_decimal::Decimal::ZERO, None),
    };
    let fact = "tenant_id = $1 AND metric = $2 AND occurred_at = $3 AND idempotency_key = $4";
    sqlx::query(&format!(
        "INSERT INTO {schema}.usage_corrections (position, tenant_id, idempotency_key, metric, kind, occurred_at, fact_position, fact_item,
                                                correction, previous_quantity, quantity, reason, actor, at, previous_value, value)
         SELECT $5, $1, $4, $2, $6, $3, f.position, f.item, $7, $8, $9, $10, $11, $12, $13, $14
         FROM (SELECT NULL) AS one
         LEFT JOIN LATERAL (SELECT position, item FROM {schema}.usage_records WHERE {fact} LIMIT 1) AS f ON true"
    ))
    .bind(tenant_id)
    .bind(metric.as_str())
    .bind(occurred_at)
    .bind(&key)
    .bind(event.position)
    .bind(kind)
    .bind(name)
    .bind(previous)
    .bind(quantity)
    .bind(&reason)
    .bind(&actor)
    .bind(at)
    .bind(&previous_value)
    .bind(&value)
    .execute(&mut *conn)
    .await?;
    let change = match amended {
        None => format!("DELETE FROM {schema}.usage_records WHERE {fact}"),
        Some(_) => format!("UPDATE {schema}.usage_records SET quantity = $5, value = $6 WHERE {fact}"),
    };
    let mut change = sqlx::query(&change).bind(tenant_id).bind(metric.as_str()).bind(occurred_at).bind(&key);
    if amended.is_some() {
        change = change.bind(quantity).bind(&value);
    }
    change.execute(&mut *conn).await?;
    // The hour's bucket, counted again (gone when no fact is left in it).
    sqlx::query(&format!(
        "WITH b AS (SELECT date_trunc('hour', $3 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour),
         agg AS (
             SELECT coalesce(sum(r.quantity), 0) AS total, count(*) AS facts,
                    (array_agg(r.quantity ORDER BY r.occurred_at DESC, r.position DESC, r.item DESC))[1] AS last_value,
                    max(r.occurred_at) AS last_at, max(r.quantity) AS max_value
             FROM {schema}.usage_records r, b
             WHERE r.tenant_id = $1 AND r.metric = $2 AND r.occurred_at >= b.hour AND r.occurred_at < b.hour + interval '1 hour'
         ),
         updated AS (
             UPDATE {schema}.usage_hourly h
             SET total = agg.total, facts = agg.facts, last_value = agg.last_value, last_at = agg.last_at, max_value = agg.max_value
             FROM agg, b WHERE h.tenant_id = $1 AND h.metric = $2 AND h.hour = b.hour AND agg.facts > 0
         )
         DELETE FROM {schema}.usage_hourly h USING agg, b WHERE h.tenant_id = $1 AND h.metric = $2 AND h.hour = b.hour AND agg.facts = 0"
    ))
    .bind(tenant_id)
    .bind(metric.as_str())
    .bind(occurred_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// `WITH f AS (..)`: the facts of the usage events matching `range` (a condition on
/// `position`), one row each: a fact on its own read straight from its payload, a batch's
/// facts from its `facts` array (the batch's payload read once: its tenant and time computed
/// before the array is taken apart, not for every fact).
fn facts_in(range: &str) -> String {
    format!(
        "WITH f AS (
             SELECT (payload->>'tenant_id')::uuid AS tenant_id, payload->>'metric' AS metric, payload->>'kind' AS kind,
                    (payload->>'quantity')::numeric AS quantity, payload->>'idempotency_key' AS idempotency_key,
                    (payload->>'occurred_at')::timestamptz AS occurred_at, (payload->>'recorded_at')::timestamptz AS recorded_at,
                    position, 1 AS item, payload->>'value' AS value
             FROM events
             WHERE {range} AND (aggregate_type = 'Usage') IS TRUE
             UNION ALL
             SELECT b.tenant_id, x.f->>'metric', x.f->>'kind', (x.f->>'quantity')::numeric, x.f->>'idempotency_key',
                    (x.f->>'occurred_at')::timestamptz, b.recorded_at, b.position, x.n::integer, x.f->>'value'
             FROM (SELECT position, (payload->>'tenant_id')::uuid AS tenant_id, (payload->>'recorded_at')::timestamptz AS recorded_at,
                          payload->'facts' AS facts
                   FROM events
                   WHERE {range} AND (aggregate_type = 'UsageBatch') IS TRUE
                   OFFSET 0) AS b
             CROSS JOIN LATERAL jsonb_array_elements(b.facts) WITH ORDINALITY AS x(f, n)
         )"
    )
}

/// Inserts the facts of `f` and folds them into their hourly buckets.
fn fold(schema: &str) -> String {
    format!(
        ", facts AS (
             INSERT INTO {schema}.usage_records (tenant_id, metric, kind, quantity, idempotency_key, occurred_at, recorded_at, position, item, value)
             SELECT * FROM f
         )
         INSERT INTO {schema}.usage_hourly AS h (tenant_id, metric, kind, hour, total, facts, last_value, last_at, max_value)
         SELECT tenant_id, metric, min(kind), date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', sum(quantity), count(*),
                (array_agg(quantity ORDER BY occurred_at DESC, position DESC, item DESC))[1], max(occurred_at), max(quantity)
         FROM f
         GROUP BY 1, 2, 4
         ON CONFLICT (tenant_id, metric, hour) DO UPDATE SET
             total = h.total + EXCLUDED.total,
             facts = h.facts + EXCLUDED.facts,
             max_value = greatest(h.max_value, EXCLUDED.max_value),
             last_value = CASE WHEN EXCLUDED.last_at >= h.last_at THEN EXCLUDED.last_value ELSE h.last_value END,
             last_at = greatest(h.last_at, EXCLUDED.last_at)"
    )
}

/// One usage fact as the tables hold it.
struct Fact {
    tenant_id: uuid::Uuid,
    metric: String,
    kind: &'static str,
    quantity: rust_decimal::Decimal,
    value: Option<String>,
    idempotency_key: String,
    occurred_at: chrono::DateTime<chrono::Utc>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl Fact {
    /// The facts `event` holds: one for a `UsageRecorded`, each of a `UsageBatchRecorded`'s in
    /// order, none for other events.
    fn read(event: &StoredEvent) -> Result<Vec<Self>, ProjectionError> {
        let kind = MetricKind::as_str;
        match event.aggregate_type.as_str() {
            "Usage" => {
                let UsageEvent::UsageRecorded { tenant_id, metric, kind: k, quantity, value, idempotency_key, occurred_at, recorded_at } =
                    serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
                Ok(vec![Self {
                    tenant_id,
                    metric: metric.as_str().to_owned(),
                    kind: kind(k),
                    quantity,
                    value,
                    idempotency_key,
                    occurred_at,
                    recorded_at,
                }])
            }
            "UsageBatch" => {
                let UsageBatchEvent::UsageBatchRecorded { tenant_id, recorded_at, facts } =
                    serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
                Ok(facts
                    .into_iter()
                    .map(|f| Self {
                        tenant_id,
                        metric: f.metric.as_str().to_owned(),
                        kind: kind(f.kind),
                        quantity: f.quantity,
                        value: f.value,
                        idempotency_key: f.idempotency_key,
                        occurred_at: f.occurred_at,
                        recorded_at,
                    })
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    /// `apply_range` reads `UsageRecorded` and `UsageBatchRecorded` payloads in SQL as stored: if an upcaster for it is
    /// ever added, that SQL must learn the new shape (or the projection go back to reading
    /// events through Rust), and this test says so.
    #[test]
    fn no_upcaster_changes_usage_recorded() {
        let upcasters = domain::upcasting::upcasters();
        for version in ["0.1", "1.0", "1.0.0", "1.1"] {
            for event_type in ["UsageRecorded", "UsageBatchRecorded"] {
                assert!(!upcasters.iter().any(|u| u.can_upcast(event_type, version)), "an upcaster for {event_type} {version}");
            }
        }
    }
}
