//! Quotas: `GET /v1/quota` and `GET /v1/quota/{metric}`. Hard counts come from counters the
//! event store updates with each append, metered ones from read models that the read checks
//! hold the tenant's last event, so an answer is never behind a command the caller has seen
//! acknowledged.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use commands::quota::{canonical_metric, report_at, QuotaLine};

use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::error::ApiError;

/// The quota routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/quota", get(all)).route("/v1/quota/{metric}", get(one))
}

/// Every quota: `[{metric, limit, used, remaining, period_start, period_end, enforcement}]`.
#[utoipa::path(
    get,
    path = "/v1/quota",
    tag = "quota",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Every metric: limit, used, remaining, period", body = Vec<crate::schemas::Quota>),
        crate::openapi::AuthErrors
    ),
)]
async fn all(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<Vec<QuotaLine>>, ApiError> {
    Ok(Json(read(&state, &caller).await?))
}

/// The tenant's quotas, reflecting every command of the tenant already answered (checked in
/// the same statement: see `consistency::read_own_writes`).
async fn read(state: &AppState, caller: &TenantCaller) -> Result<Vec<QuotaLine>, ApiError> {
    crate::consistency::read_own_writes(state, || async { Ok(report_at(state.pool(), caller.tenant_id, state.now()).await?) }).await
}

/// One quota, by its limit name (`bookings_per_month`) or its metric (`bookings`, `api_calls`).
#[utoipa::path(
    get,
    path = "/v1/quota/{metric}",
    tag = "quota",
    params(("metric" = String, Path, description = "api_calls, storage_bytes, sms, tickets, bookings, events, ..."), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "One metric: limit, used, remaining, period", body = crate::schemas::Quota),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn one(State(state): State<AppState>, caller: TenantCaller, Path(metric): Path<String>) -> Result<Json<QuotaLine>, ApiError> {
    let metric = canonical_metric(&metric).ok_or_else(|| ApiError::not_found("quota metric"))?;
    let lines = read(&state, &caller).await?;
    lines.into_iter().find(|l| l.metric == metric).map(Json).ok_or_else(|| ApiError::not_found("quota metric"))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(all, one))]
pub struct Docs;
