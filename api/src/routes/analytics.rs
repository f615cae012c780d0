//! Analytics over the `analytics` schema (the same views BI tools read): a tenant's usage per
//! hour/day/month and the platform's revenue per month.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use projections::usage::reads::Granularity;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::usage::{UsageBucket, UsageSeries};
use crate::amounts::Money;

use crate::app::AppState;
use crate::auth::{Admin, TenantCaller};
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The analytics routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/analytics/usage", get(usage)).route("/v1/admin/analytics/revenue", get(revenue))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    #[param(pattern = "^(hour|day|month)$")]
    granularity: Option<String>,
    metric: Option<String>,
}

/// `GET /v1/analytics/usage?from&to&granularity=hour|day|month&metric` (tenant): buckets from
/// `analytics.usage_hourly|daily|monthly`. Defaults: the last 30 days, by day.
#[utoipa::path(
    get,
    path = "/v1/analytics/usage",
    tag = "analytics",
    params(UsageQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Usage per hour, day or month from the analytics schema", body = UsageSeries),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn usage(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageSeries>, ApiError> {
    let granularity = q.granularity.as_deref().unwrap_or("day");
    let granularity = Granularity::parse(granularity).ok_or_else(|| ApiError::validation("granularity", "must be hour, day or month"))?;
    let to = q.to.unwrap_or_else(|| state.now());
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    let rows = state.reads().usage().analytics(caller.tenant_id, q.metric.as_deref(), granularity, from, to).await?;
    let buckets = rows.into_iter().map(|r| UsageBucket::new(r.metric, r.kind, r.bucket, None, r.value, r.facts)).collect();
    Ok(Json(UsageSeries::new(granularity.as_str(), from, to, buckets)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RevenueQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// The platform's revenue in one month (UTC).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevenueMonth {
    /// `YYYY-MM`.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}$", example = "2027-01")]
    month: String,
    /// Monthly recurring revenue at the month's end.
    mrr: Money,
    /// 12 × MRR.
    arr: Money,
    /// Paying tenants at the month's end.
    active_tenants: i64,
    /// Tenants that started paying in it.
    new_tenants: i64,
    /// Tenants whose subscription was cancelled in it.
    churned_tenants: i64,
    /// `churned_tenants / paying tenants at the month's start`, 4 decimals.
    churn_rate: f64,
    /// MRR by plan code.
    by_plan: BTreeMap<String, Money>,
}

/// `GET /v1/admin/analytics/revenue?from&to` (admin): per month (UTC)
/// `{month, mrr, arr, active_tenants, new_tenants, churned_tenants, churn_rate, by_plan}`;
/// MRR at month end, churn rate = cancelled in the month / paying at its start.
#[utoipa::path(
    get,
    path = "/v1/admin/analytics/revenue",
    tag = "analytics",
    params(RevenueQuery),
    responses(
        (status = 200, description = "Per month: {month, mrr, arr, active_tenants, new_tenants, churned_tenants, churn_rate, by_plan}", body = Vec<RevenueMonth>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn revenue(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<RevenueQuery>,
) -> Result<Json<Vec<RevenueMonth>>, ApiError> {
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from >= to {
            return Err(ApiError::validation("from", "must be before to"));
        }
    }
    let rows = state.reads().billing().revenue_monthly(q.from, q.to).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| {
                let churn_rate = if r.active_at_start > 0 {
                    (Decimal::from(r.churned_tenants) / Decimal::from(r.active_at_start)).round_dp(4).to_f64().unwrap_or(0.0)
                } else {
                    0.0
                };
                // The view writes amounts as text, so no float ever touches them.
                let amount = |v: &Value| v.as_str().and_then(|s| s.parse::<Decimal>().ok()).unwrap_or_default();
                RevenueMonth {
                    month: r.month.format("%Y-%m").to_string(),
                    mrr: r.mrr.into(),
                    arr: r.arr.into(),
                    active_tenants: r.active_tenants,
                    new_tenants: r.new_tenants,
                    churned_tenants: r.churned_tenants,
                    churn_rate,
                    by_plan: r.by_plan.0.iter().map(|(plan, v)| (plan.clone(), Money(amount(v)))).collect(),
                }
            })
            .collect(),
    ))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(usage, revenue))]
pub struct Docs;
