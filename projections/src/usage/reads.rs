//! Reads of the `usage` projection's tables (`rm.usage_records`, `rm.usage_hourly`) and of the
//! `analytics` views built on them (`usage_hourly|daily|monthly`, the ones BI tools read).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::reads::ReadModels;

/// Reads of usage per hour and of the usage analytics views.
#[derive(Debug, Clone, Copy)]
pub struct UsageReads<'a>(&'a PgPool);

impl ReadModels {
    /// Usage per hour, day and month.
    pub fn usage(&self) -> UsageReads<'_> {
        UsageReads(self.pool())
    }
}

/// A bucket of a tenant's usage of one metric.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageBucketRow {
    pub metric: String,
    /// `counter` or `gauge`.
    pub kind: String,
    pub bucket: DateTime<Utc>,
    /// The sum of a counter's facts in the bucket.
    pub total: Decimal,
    pub facts: i64,
    /// A gauge's latest value in the bucket.
    pub last: Decimal,
    /// The largest value in the bucket (a `max` metric's figure; a `unique_count` metric's
    /// distinct values).
    pub largest: Decimal,
}

impl UsageBucketRow {
    /// The bucket's figure as its metric aggregates: a gauge's latest value, a `max` metric's
    /// largest, a `unique_count` metric's distinct values, a counter's sum.
    pub fn value(&self) -> Decimal {
        match self.kind.as_str() {
            "gauge" => self.last,
            "max" | "unique" => self.largest,
            _ => self.total,
        }
    }
}

/// A bucket of an `analytics.usage_*` view.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AnalyticsBucketRow {
    pub metric: String,
    pub kind: String,
    pub bucket: DateTime<Utc>,
    pub value: Decimal,
    pub facts: i64,
}

/// How finely usage is bucketed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

impl Granularity {
    /// `hour`, `day` or `month`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    /// Its name (as `date_trunc` takes it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// The analytics view of this granularity.
    fn view(self) -> &'static str {
        match self {
            Self::Hour => "usage_hourly",
            Self::Day => "usage_daily",
            Self::Month => "usage_monthly",
        }
    }
}

impl UsageReads<'_> {
    /// Tenant `tenant_id`'s usage (of `metric`, if given) from the hour of `from` to `to`,
    /// bucketed by `granularity` (UTC), by metric and bucket.
    pub async fn series(
        &self,
        tenant_id: Uuid,
        metric: Option<&str>,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageBucketRow>, sqlx::Error> {
        // Distinct values do not add up hour by hour: a `unique_count` metric's buckets are
        // counted from its facts.
        sqlx::query_as(
            "SELECT metric, kind, date_trunc($4, hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                    sum(total) AS total, sum(facts)::bigint AS facts,
                    (array_agg(last_value ORDER BY last_at DESC))[1] AS last, max(max_value) AS largest
             FROM rm.usage_hourly
             WHERE tenant_id = $1 AND ($2::text IS NULL OR metric = $2) AND kind <> 'unique'
               AND hour >= date_trunc('hour', $3::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND hour < $5
             GROUP BY metric, kind, bucket
             UNION ALL
             SELECT metric, kind, date_trunc($4, occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                    sum(quantity), count(*)::bigint, 0::numeric, count(DISTINCT value)::numeric
             FROM rm.usage_records
             WHERE tenant_id = $1 AND ($2::text IS NULL OR metric = $2) AND kind = 'unique'
               AND occurred_at >= date_trunc('hour', $3::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND occurred_at < $5
             GROUP BY metric, kind, 3
             ORDER BY metric, bucket",
        )
        .bind(tenant_id)
        .bind(metric)
        .bind(from)
        .bind(granularity.as_str())
        .bind(to)
        .fetch_all(self.0)
        .await
    }

    /// Tenant `tenant_id`'s buckets (of `metric`, if given) in `[from, to)` from the analytics
    /// view of `granularity`, by metric and bucket.
    pub async fn analytics(
        &self,
        tenant_id: Uuid,
        metric: Option<&str>,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<AnalyticsBucketRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT metric, kind, bucket, value, facts FROM analytics.{}
             WHERE tenant_id = $1 AND bucket >= $2 AND bucket < $3 AND ($4::text IS NULL OR metric = $4) ORDER BY metric, bucket",
            granularity.view()
        ))
        .bind(tenant_id)
        .bind(from)
        .bind(to)
        .bind(metric)
        .fetch_all(self.0)
        .await
    }

    /// The platform's counted usage per metric and month over the last two years (the console's
    /// chart): `(metric, month, total)`.
    pub async fn platform_monthly(&self) -> Result<Vec<(String, DateTime<Utc>, f64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT metric, bucket, sum(value)::float8 FROM analytics.usage_monthly
             WHERE kind = 'counter' AND bucket >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '23 months'
             GROUP BY 1, 2 ORDER BY 2",
        )
        .fetch_all(self.0)
        .await
    }
}
