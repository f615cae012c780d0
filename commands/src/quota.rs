//! Quotas: a tenant's effective limits (its plan version's limits plus add-ons) and what it
//! has used of each.
//!
//! Hard limits (bookings per month, event resources) are counted in `quota_counters`, which
//! the event store updates in the same transaction as the events, so a quota answer is never
//! behind an acknowledged command. Metered quantities (API calls, storage) come from the usage
//! read model, which commands settle before they answer; API calls count over the billing
//! period the next invoice bills, not the calendar month.

use chrono::{DateTime, DurationRound, Utc};
use domain::billing::period::{add_months, months_in, Period};
use domain::booking::month_start;
use domain::plan::PlanLimits;
use domain::subscription::Subscription;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// The limits in force for `tenant_id`: its subscription's plan terms plus add-ons. A tenant
/// without a subscription (not yet opened) gets nothing: every limit is 0.
pub async fn effective_limits(pool: &PgPool, tenant_id: Uuid) -> Result<PlanLimits, sqlx::Error> {
    let state: Option<sqlx::types::Json<Subscription>> =
        sqlx::query_scalar("SELECT state FROM rm.subscriptions WHERE tenant_id = $1").bind(tenant_id).fetch_optional(pool).await?;
    Ok(limits_of(state.map(|s| s.0)))
}

/// The limits a subscription (in its read model's state) grants.
pub fn limits_of(subscription: Option<Subscription>) -> PlanLimits {
    let Some(subscription) = subscription else {
        return PlanLimits {
            users: Some(0),
            bookings_per_month: Some(0),
            events: Some(0),
            tickets_per_event: Some(0),
            storage_mb: Some(0),
            api_calls_per_month: Some(0),
        };
    };
    let mut limits = subscription.plan.map(|p| p.limits).expect("a started subscription has a plan");
    limits.users = limits.users.map(|u| u + u64::from(subscription.addons.extra_users));
    limits.storage_mb = limits.storage_mb.map(|s| s + 1024 * u64::from(subscription.addons.extra_storage_gb));
    limits
}

/// One metric's quota.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaLine {
    /// The metric (named as in the plan's limits).
    pub metric: &'static str,
    /// The limit (`None`: unlimited).
    pub limit: Option<u64>,
    /// Used so far in the period.
    pub used: u64,
    /// `limit - used` (never below 0; `None`: unlimited).
    pub remaining: Option<u64>,
    /// Whether the limit is enforced (refused beyond it) or metered (billed beyond it).
    pub enforcement: &'static str,
    /// Start of the period the usage counts in (`None` for standing counts).
    pub period_start: Option<DateTime<Utc>>,
    /// End of that period.
    pub period_end: Option<DateTime<Utc>>,
}

/// The names a metric may be asked for by, mapped to its canonical name.
pub fn canonical_metric(name: &str) -> Option<&'static str> {
    Some(match name {
        "bookings_per_month" | "bookings" => "bookings_per_month",
        "events" => "events",
        "users" => "users",
        "storage_mb" | "storage" | "storage_bytes" => "storage_mb",
        "api_calls_per_month" | "api_calls" => "api_calls_per_month",
        _ => return None,
    })
}

/// The subscription's state, the bookings and event-resource counters, the billing period's
/// API calls and the latest storage gauge.
type QuotaRow = (Option<sqlx::types::Json<Subscription>>, Option<i64>, Option<i64>, Option<i64>, i64, Option<i64>, Option<i64>);

/// The period metered usage counts in: the subscription's current billing period (the one its
/// next invoice bills), or the calendar month without a subscription.
fn metered_period(subscription: Option<&Subscription>, now: DateTime<Utc>) -> Period {
    subscription
        .and_then(Subscription::current_period)
        .unwrap_or_else(|| Period { start: month_start(now), end: add_months(month_start(now), 1) })
}

/// How to sum `period` from the hourly totals: the hours `[from, to)` covering it from the hour
/// it starts in, minus the facts of that first hour before its start, plus the facts of its
/// last, partial hour: `(hours, minus, plus)`, each `[from, to)`. The facts read are those of
/// the first hour *before* the period (the previous period's last minutes) and those of its
/// last hour (in the future while the period runs), so a busy tenant's current hour never has
/// to be summed fact by fact.
type Split = ((DateTime<Utc>, DateTime<Utc>), (DateTime<Utc>, DateTime<Utc>), (DateTime<Utc>, DateTime<Utc>));

fn split_hours(period: Period) -> Split {
    let floor = |t: DateTime<Utc>| t.duration_trunc(chrono::TimeDelta::hours(1)).unwrap_or(t);
    let (first_hour, last_hour) = (floor(period.start), floor(period.end));
    if first_hour < last_hour {
        ((first_hour, last_hour), (first_hour, period.start), (last_hour, period.end))
    } else {
        // A period within one hour: its facts.
        ((period.start, period.start), (period.start, period.start), (period.start, period.end))
    }
}

/// The billing period each tenant's last quota read counted over: a guess that spares the
/// read of the subscription before the quota statement (which checks it, so a stale guess
/// costs one more statement, never a wrong answer).
static PERIODS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Uuid, Period>>> = std::sync::LazyLock::new(Default::default);

/// How many tenants' periods [`PERIODS`] keeps before it starts afresh (~5 MB).
const PERIODS_KEPT: usize = 100_000;

/// Every quota of `tenant_id` as of `now`, read in one statement (one snapshot), with the
/// position of the tenant's last event in that snapshot (so a caller can tell whether the read
/// models it read already held everything the tenant did). Metered API calls count over the
/// subscription's current billing period against that period's allowance (the monthly
/// allowance times the months it spans), exactly what its invoice will bill.
pub async fn report_at(pool: &PgPool, tenant_id: Uuid, now: DateTime<Utc>) -> Result<(Vec<QuotaLine>, i64), sqlx::Error> {
    let (month, next_month) = (month_start(now), add_months(month_start(now), 1));
    // The billing period comes from the subscription: the one this tenant's last quota read
    // found (kept in memory), or else read first; then everything in one statement, which
    // checks the period and reads again if a renewal moved it in between.
    let cached = PERIODS.lock().map(|periods| periods.get(&tenant_id).copied()).unwrap_or(None);
    let mut period = match cached {
        Some(period) => period,
        None => {
            let current: Option<sqlx::types::Json<Subscription>> =
                sqlx::query_scalar("SELECT state FROM rm.subscriptions WHERE tenant_id = $1").bind(tenant_id).fetch_optional(pool).await?;
            metered_period(current.as_ref().map(|s| &s.0), now)
        }
    };
    let (state, bookings, events, users, api_calls, storage_bytes, last) = loop {
        let (hours, minus, plus) = split_hours(period);
        let row: QuotaRow = sqlx::query_as(
            "SELECT (SELECT state FROM rm.subscriptions WHERE tenant_id = $1),
                    (SELECT used FROM quota_counters WHERE tenant_id = $1 AND metric = 'bookings_per_month' AND period_start = $2),
                    (SELECT used FROM quota_counters WHERE tenant_id = $1 AND metric = 'events' AND period_start = 'epoch'),
                    (SELECT used FROM quota_counters WHERE tenant_id = $1 AND metric = 'users' AND period_start = 'epoch'),
                    -- The period from the hourly totals (at most 744 rows a month however many
                    -- calls), corrected at its two ends from the facts (see `split_hours`).
                    (SELECT coalesce(sum(total), 0)::bigint FROM rm.usage_hourly
                     WHERE tenant_id = $1 AND metric = 'api_calls' AND hour >= $3 AND hour < $4)
                    - (SELECT coalesce(sum(quantity), 0)::bigint FROM rm.usage_records
                       WHERE tenant_id = $1 AND metric = 'api_calls' AND occurred_at >= $5 AND occurred_at < $6)
                    + (SELECT coalesce(sum(quantity), 0)::bigint FROM rm.usage_records
                       WHERE tenant_id = $1 AND metric = 'api_calls' AND occurred_at >= $7 AND occurred_at < $8),
                    (SELECT quantity FROM rm.usage_records WHERE tenant_id = $1 AND metric = 'storage_bytes'
                     ORDER BY occurred_at DESC, position DESC LIMIT 1),
                    (SELECT max(position) FROM events WHERE tenant_id = $1)",
        )
        .bind(tenant_id)
        .bind(month)
        .bind(hours.0)
        .bind(hours.1)
        .bind(minus.0)
        .bind(minus.1)
        .bind(plus.0)
        .bind(plus.1)
        .fetch_one(pool)
        .await?;
        let seen = metered_period(row.0.as_ref().map(|s| &s.0), now);
        if seen == period {
            break row;
        }
        period = seen;
    };
    if let Ok(mut periods) = PERIODS.lock() {
        if periods.len() >= PERIODS_KEPT && !periods.contains_key(&tenant_id) {
            periods.clear();
        }
        periods.insert(tenant_id, period);
    }
    let months = state.as_ref().and_then(|s| s.0.billing_period).map_or(1, |p| u64::from(months_in(p)));
    let limits = limits_of(state.map(|s| s.0));
    let (bookings, events) = (bookings.unwrap_or(0).max(0) as u64, events.unwrap_or(0).max(0) as u64);
    let line = |metric, limit: Option<u64>, used: u64, enforcement, period: Option<(DateTime<Utc>, DateTime<Utc>)>| QuotaLine {
        metric,
        limit,
        used,
        remaining: limit.map(|l| l.saturating_sub(used)),
        enforcement,
        period_start: period.map(|p| p.0),
        period_end: period.map(|p| p.1),
    };
    let lines = vec![
        line("bookings_per_month", limits.bookings_per_month, bookings, "hard", Some((month, next_month))),
        line("events", limits.events, events, "hard", None),
        line("users", limits.users, users.unwrap_or(0).max(0) as u64, "hard", None),
        line("storage_mb", limits.storage_mb, (storage_bytes.unwrap_or(0).max(0) as u64).div_ceil(1024 * 1024), "metered", None),
        line(
            "api_calls_per_month",
            limits.api_calls_per_month.map(|per_month| per_month * months),
            api_calls.max(0) as u64,
            "metered",
            Some((period.start, period.end)),
        ),
    ];
    Ok((lines, last.unwrap_or(0)))
}
