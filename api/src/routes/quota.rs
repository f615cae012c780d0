//! Quotas: `GET /v1/quota` and `GET /v1/quota/{metric}`. Hard counts come from counters the
//! event store updates with each append, metered ones from read models that the read checks
//! hold the tenant's last event, so an answer is never behind a command the caller has seen
//! acknowledged.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use commands::quota::{canonical_metric, report_at, QuotaLine, QUOTA_NAMES};

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
        (status = 200, description = "Every metric: limit, used, remaining, period", body = Vec<QuotaLine>),
        crate::openapi::AuthErrors
    ),
)]
async fn all(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<Vec<QuotaLine>>, ApiError> {
    Ok(Json(read(&state, &caller).await?))
}

/// The tenant's quotas, reflecting every command of the tenant already answered: the answer
/// kept for the tenant's last position in the log (one index probe) if there is one, else read
/// and checked in the same statement (see `consistency::read_own_writes`) and kept.
async fn read(state: &AppState, caller: &TenantCaller) -> Result<Vec<QuotaLine>, ApiError> {
    let now = state.now();
    let month = domain::booking::month_start(now);
    let last = state.log().tenant_head(caller.tenant_id).await?;
    if let Some(lines) = state.quotas().get(caller.tenant_id, last.unwrap_or(0), month) {
        crate::consistency::appended(last.unwrap_or(0));
        return Ok(lines);
    }
    // A replica whose read models have applied the tenant's last position answers as the
    // primary would; if it fails, the primary answers.
    let needed = last.unwrap_or(0);
    if let Some(replica) = state.replicas().serving(needed).cloned() {
        match report_at(&replica, state.usage().definitions(), caller.tenant_id, now).await {
            Ok((lines, own)) => {
                crate::consistency::served_by(true);
                crate::consistency::appended(needed);
                if own == needed {
                    state.quotas().put(caller.tenant_id, needed, month, &lines);
                }
                return Ok(lines);
            }
            Err(e) => {
                tracing::warn!(error = %e, "a quota read on a replica failed; the primary serves it");
                state.replicas().failed(&replica);
            }
        }
    }
    crate::consistency::served_by(false);
    let (lines, read_at) = crate::consistency::read_own_writes_at(state, || async {
        Ok(report_at(state.pool(), state.usage().definitions(), caller.tenant_id, now).await?)
    })
    .await?;
    if let Some(position) = read_at {
        state.quotas().put(caller.tenant_id, position, month, &lines);
    }
    Ok(lines)
}

/// One quota, by its limit name (`bookings_per_month`) or its metric (`bookings`, `api_calls`).
#[utoipa::path(
    get,
    path = "/v1/quota/{metric}",
    tag = "quota",
    params(("metric" = String, Path, description = "api_calls, storage_bytes, bookings, events, users, or the code of any metric the tenant's plan prices (limit null: used is the period's aggregate)"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "One metric: limit, used, remaining, period", body = QuotaLine),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn one(State(state): State<AppState>, caller: TenantCaller, Path(metric): Path<String>) -> Result<Json<QuotaLine>, ApiError> {
    let unknown = || {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no quota \"{}\": the quotas are {QUOTA_NAMES}, and every metric the plan prices", metric.escape_debug()),
        )
    };
    // A limit's names, or the code of a metric the plan prices.
    let metric = canonical_metric(&metric).map_or(metric.clone(), str::to_owned);
    let lines = read(&state, &caller).await?;
    lines.into_iter().find(|l| l.metric == metric).map(Json).ok_or_else(unknown)
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(all, one))]
pub struct Docs;
