//! Analytics over the `analytics` schema (the same views BI tools read): a tenant's usage per
//! hour/day/month and the platform's revenue per month.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::billing::money::format;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Map, Value};

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
        (status = 200, description = "Usage per hour, day or month from the analytics schema", body = crate::schemas::UsageSeries),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn usage(State(state): State<AppState>, caller: TenantCaller, ApiQuery(q): ApiQuery<UsageQuery>) -> Result<Json<Value>, ApiError> {
    let view = match q.granularity.as_deref().unwrap_or("day") {
        "hour" => "usage_hourly",
        "day" => "usage_daily",
        "month" => "usage_monthly",
        _ => return Err(ApiError::validation("granularity", "must be hour, day or month")),
    };
    let to = q.to.unwrap_or_else(|| state.now());
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    let rows: Vec<(String, String, DateTime<Utc>, Decimal, i64)> = sqlx::query_as(&format!(
        "SELECT metric, kind, bucket, value, facts FROM analytics.{view}
         WHERE tenant_id = $1 AND bucket >= $2 AND bucket < $3 AND ($4::text IS NULL OR metric = $4) ORDER BY metric, bucket"
    ))
    .bind(caller.tenant_id)
    .bind(from)
    .bind(to)
    .bind(q.metric)
    .fetch_all(state.pool())
    .await?;
    let buckets: Vec<Value> =
        rows.into_iter().map(|(metric, kind, start, value, facts)| json!({"metric": metric, "kind": kind, "start": start, "value": value.normalize(), "facts": facts})).collect();
    Ok(Json(json!({"granularity": q.granularity.unwrap_or_else(|| "day".into()), "from": from, "to": to, "buckets": buckets})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RevenueQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// A revenue row as the view has it.
type RevenueRow = (DateTime<Utc>, Decimal, Decimal, i64, i64, i64, i64, sqlx::types::Json<Map<String, Value>>);

/// `GET /v1/admin/analytics/revenue?from&to` (admin): per month (UTC)
/// `{month, mrr, arr, active_tenants, new_tenants, churned_tenants, churn_rate, by_plan}`;
/// MRR at month end, churn rate = cancelled in the month / paying at its start.
#[utoipa::path(
    get,
    path = "/v1/admin/analytics/revenue",
    tag = "analytics",
    params(RevenueQuery),
    responses(
        (status = 200, description = "Per month: {month, mrr, arr, active_tenants, new_tenants, churned_tenants, churn_rate, by_plan}", body = Vec<crate::schemas::RevenueMonth>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn revenue(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<RevenueQuery>) -> Result<Json<Vec<Value>>, ApiError> {
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from >= to {
            return Err(ApiError::validation("from", "must be before to"));
        }
    }
    let rows: Vec<RevenueRow> = sqlx::query_as(
        "SELECT month, mrr, arr, active_tenants, new_tenants, churned_tenants, active_at_start, by_plan FROM analytics.revenue_monthly
         WHERE ($1::timestamptz IS NULL OR month >= date_trunc('month', $1 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AND ($2::timestamptz IS NULL OR month < $2)
         ORDER BY month",
    )
    .bind(q.from)
    .bind(q.to)
    .fetch_all(state.pool())
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(month, mrr, arr, active, new, churned, at_start, by_plan)| {
                let churn_rate =
                    if at_start > 0 { (Decimal::from(churned) / Decimal::from(at_start)).round_dp(4).to_f64().unwrap_or(0.0) } else { 0.0 };
                // The view writes amounts as text, so no float ever touches them.
                let amount = |v: &Value| v.as_str().and_then(|s| s.parse::<Decimal>().ok()).unwrap_or_default();
                let by_plan: Map<String, Value> =
                    by_plan.0.iter().map(|(plan, v)| (plan.clone(), Value::String(format(amount(v))))).collect();
                json!({
                    "month": month.format("%Y-%m").to_string(),
                    "mrr": format(mrr),
                    "arr": format(arr),
                    "active_tenants": active,
                    "new_tenants": new,
                    "churned_tenants": churned,
                    "churn_rate": churn_rate,
                    "by_plan": by_plan,
                })
            })
            .collect(),
    ))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(usage, revenue))]
pub struct Docs;
