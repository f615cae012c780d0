//! Quotas: a tenant's effective limits (its plan version's limits plus add-ons) and what it
//! has used of each.
//!
//! Hard limits (bookings per month, event resources) are counted in `quota_counters`, which
//! the event store updates in the same transaction as the events, so a quota answer is never
//! behind an acknowledged command. Metered quantities (API calls, storage) come from the usage
//! read model, which commands settle before they answer; API calls count over the billing
//! period the next invoice bills, not the calendar month.

use chrono::{DateTime, Utc};
use domain::billing::period::{add_months, months_in};
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
    match subscription {
        Some(s) => limits_from(Some(s.plan.map(|p| p.limits).expect("a started subscription has a plan")), Some(s.addons)),
        None => limits_from(None, None),
    }
}

/// The limits a subscription's plan limits and add-ons (as its read model's state holds them)
/// grant; none (no subscription): every limit is 0.
pub fn limits_from(limits: Option<PlanLimits>, addons: Option<domain::subscription::Addons>) -> PlanLimits {
    let Some(mut limits) = limits else {
        return PlanLimits {
            users: Some(0),
            bookings_per_month: Some(0),
            events: Some(0),
            tickets_per_event: Some(0),
            storage_mb: Some(0),
            api_calls_per_month: Some(0),
        };
    };
    limits_with_addons(&mut limits, &addons.unwrap_or_default());
    limits
}

/// A plan's limits grown by the add-ons: extra users, extra storage.
fn limits_with_addons(limits: &mut PlanLimits, addons: &domain::subscription::Addons) {
    limits.users = limits.users.map(|u| u + u64::from(addons.extra_users));
    limits.storage_mb = limits.storage_mb.map(|s| s + 1024 * u64::from(addons.extra_storage_gb));
}

/// One metric's quota.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Quota)]
pub struct QuotaLine {
    /// The metric as the plan's limits name it (`api_calls_per_month`, `bookings_per_month`,
    /// `events`, `users`, `storage_mb`), or the code of a metric the plan's charges name
    /// (`gb_hours`).
    pub metric: String,
    /// The limit; `null`: unlimited (every metric a plan prices without a limit).
    #[schema(minimum = 0)]
    pub limit: Option<u64>,
    /// Used so far in the period: for a metric the plan prices, its aggregate (`sum`, `max`,
    /// `last` or `unique_count`), rounded to its precision (a JSON number, decimal where the
    /// metric keeps decimals).
    #[serde(serialize_with = "as_number")]
    #[schema(value_type = f64, minimum = 0)]
    pub used: rust_decimal::Decimal,
    /// `limit - used`, never below 0; `null`: unlimited.
    #[schema(minimum = 0)]
    pub remaining: Option<u64>,
    /// `hard` (refused beyond the limit) or `metered` (billed beyond it).
    #[schema(pattern = "^(hard|metered)$")]
    pub enforcement: &'static str,
    /// Start of the period the usage counts in; `null` for standing counts (seats, events).
    pub period_start: Option<DateTime<Utc>>,
    /// End of that period.
    pub period_end: Option<DateTime<Utc>>,
}

/// A decimal as a JSON number (whole: an integer; else its shortest float, exact for the six
/// places a metric keeps at the magnitudes quotas reach).
fn as_number<S: serde::Serializer>(d: &rust_decimal::Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    use rust_decimal::prelude::ToPrimitive;
    let d = d.normalize();
    match (d.scale(), d.to_u64()) {
        (0, Some(whole)) => serializer.serialize_u64(whole),
        _ => serializer.serialize_f64(d.to_f64().unwrap_or_default()),
    }
}

impl QuotaLine {
    /// `used` as a whole count (the hard and built-in quotas' are).
    pub fn used_whole(&self) -> u64 {
        rust_decimal::prelude::ToPrimitive::to_u64(&self.used.ceil()).unwrap_or(0)
    }
}

/// The quotas a metric may be asked for by, as a sentence for a refusal: each limit's name with
/// the other names it answers to.
pub const QUOTA_NAMES: &str =
    "api_calls_per_month (or api_calls), bookings_per_month (or bookings), events, users, storage_mb (or storage, storage_bytes)";

/// The names a metric may be asked for by, mapped to its canonical name (a metric a plan
/// prices answers to its own code, see [`report_at`]).
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

/// The subscription's limits, add-ons and billing period, the metered period, the bookings,
/// event-resource and seat counters, the period's API calls, the latest storage gauge and the
/// tenant's last position.
type QuotaRow = (
    Option<sqlx::types::Json<PlanLimits>>,
    Option<sqlx::types::Json<domain::subscription::Addons>>,
    Option<String>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<Vec<String>>,
    Option<sqlx::types::Json<Vec<MeteredParts>>>,
);

/// A priced metric's parts in the period, as `quota_snapshot` answers them.
#[derive(Debug, serde::Deserialize)]
struct MeteredParts {
    metric: String,
    sum: rust_decimal::Decimal,
    max: Option<rust_decimal::Decimal>,
    last: Option<rust_decimal::Decimal>,
    distinct: i64,
}

/// Every quota of `tenant_id` as of `now`, read in one statement (one snapshot), with the
/// position of the tenant's last event in that snapshot (so a caller can tell whether the read
/// models it read already held everything the tenant did). Metered API calls count over the
/// subscription's current billing period (the read model's `current_period_start/end`, the
/// calendar month without a subscription) against that period's allowance (the monthly
/// allowance times the months it spans), exactly what its invoice will bill. The statement
/// (`quota_snapshot`, `migrations/0012_generic_plans.sql`: planned once per connection) reads
/// only the parts of the subscription's state it needs, whatever that state's size.
pub async fn report_at(
    pool: &PgPool,
    definitions: &crate::metrics::MetricDefinitions,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(Vec<QuotaLine>, i64), sqlx::Error> {
    let (month, next_month) = (month_start(now), add_months(month_start(now), 1));
    let row: QuotaRow = sqlx::query_as(
        "SELECT limits, addons, billing_period, period_start, period_end, bookings, events, users, api_calls, storage_bytes, last_position,
                charged, metered
         FROM quota_snapshot($1, $2, $3)",
    )
    .bind(tenant_id)
    .bind(month)
    .bind(next_month)
    .fetch_one(pool)
    .await?;
    let (
        limits,
        addons,
        billing_period,
        period_start,
        period_end,
        bookings,
        events,
        users,
        api_calls,
        storage_bytes,
        last,
        charged,
        metered,
    ) = row;
    let months = match billing_period.as_deref() {
        Some("yearly") => u64::from(months_in(domain::plan::BillingPeriod::Yearly)),
        _ => 1,
    };
    let limits = limits_from(limits.map(|l| l.0), addons.map(|a| a.0));
    let (bookings, events, users) =
        (bookings.unwrap_or(0).max(0) as u64, events.unwrap_or(0).max(0) as u64, users.unwrap_or(0).max(0) as u64);
    let line = |metric: &str, limit: Option<u64>, used: u64, enforcement, period: Option<(DateTime<Utc>, DateTime<Utc>)>| QuotaLine {
        metric: metric.to_owned(),
        limit,
        used: rust_decimal::Decimal::from(used),
        remaining: limit.map(|l| l.saturating_sub(used)),
        enforcement,
        period_start: period.map(|p| p.0),
        period_end: period.map(|p| p.1),
    };
    let mut lines = vec![
        line("bookings_per_month", limits.bookings_per_month, bookings, "hard", Some((month, next_month))),
        line("events", limits.events, events, "hard", None),
        line("users", limits.users, users, "hard", None),
        line("storage_mb", limits.storage_mb, (storage_bytes.unwrap_or(0).max(0) as u64).div_ceil(1024 * 1024), "metered", None),
        line(
            "api_calls_per_month",
            limits.api_calls_per_month.map(|per_month| per_month * months),
            api_calls.max(0) as u64,
            "metered",
            Some((period_start, period_end)),
        ),
    ];
    let charged = charged.unwrap_or_default();
    if !charged.is_empty() {
        // The metrics the plan prices beyond the built-in lines: their aggregate by their
        // definitions, no limit (a plan limits only the built-in quotas).
        let codes: Vec<&str> = charged.iter().map(String::as_str).collect();
        let definitions = definitions.resolve(&codes).await?;
        let parts = metered.map(|m| m.0).unwrap_or_default();
        let mut priced: Vec<QuotaLine> = charged
            .iter()
            .map(|code| {
                let used = match parts.iter().find(|p| &p.metric == code) {
                    Some(p) => definitions[code].figure_of(p.sum, p.max, p.last, p.distinct),
                    None => rust_decimal::Decimal::ZERO,
                };
                QuotaLine {
                    metric: code.clone(),
                    limit: None,
                    used,
                    remaining: None,
                    enforcement: "metered",
                    period_start: Some(period_start),
                    period_end: Some(period_end),
                }
            })
            .collect();
        priced.sort_by(|a, b| a.metric.cmp(&b.metric));
        lines.extend(priced);
    }
    Ok((lines, last.unwrap_or(0)))
}
