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

/// The tenant's quotas, reflecting every command of the tenant already answered: the answer
/// kept for the tenant's last position in the log (one index probe) if there is one, else read
/// and checked in the same statement (see `consistency::read_own_writes`) and kept.
async fn read(state: &AppState, caller: &TenantCaller) -> Result<Vec<QuotaLine>, ApiError> {
    let now = state.now();
    let month = domain::booking::month_start(now);
    let last: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM events WHERE tenant_id = $1").bind(caller.tenant_id).fetch_one(state.pool()).await?;
    if let Some(lines) = state.quotas().get(caller.tenant_id, last.unwrap_or(0), month) {
        crate::consistency::appended(last.unwrap_or(0));
        return Ok(lines);
    }
    let (lines, read_at) =
        crate::consistency::read_own_writes_at(state, || async { Ok(report_at(state.pool(), caller.tenant_id, now).await?) }).await?;
    if let Some(position) = read_at {
        state.quotas().put(caller.tenant_id, position, month, &lines);
    }
    Ok(lines)
}

/// Quota answers by tenant, each kept with the tenant's last position in the log and the
/// calendar month (UTC) it was read in, and served again while both are unchanged.
///
/// Sound because everything a quota answer shows follows from the tenant's own events (its
/// subscription's plan, limits, add-ons and period; its bookings, resources and members; its
/// usage facts) and the month (`bookings_per_month` counts the calendar month): with no new
/// event of the tenant, on any instance (the position is read from the log at every request),
/// and in the same month, the answer cannot differ. Only answers read with every read model
/// at or past that position are kept. Each instance keeps its own, at most
/// [`QuotaCache::CAPACITY`] tenants (then it starts afresh).
#[derive(Default)]
pub struct QuotaCache(std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Kept>>);

/// A kept answer: the tenant's last position, the month, the lines.
type Kept = (i64, chrono::DateTime<chrono::Utc>, Vec<QuotaLine>);

impl QuotaCache {
    /// The most tenants kept.
    pub const CAPACITY: usize = 10_000;

    fn get(&self, tenant: uuid::Uuid, position: i64, month: chrono::DateTime<chrono::Utc>) -> Option<Vec<QuotaLine>> {
        let kept = self.0.lock().expect("not poisoned");
        kept.get(&tenant).filter(|(at, m, _)| *at == position && *m == month).map(|(_, _, lines)| lines.clone())
    }

    fn put(&self, tenant: uuid::Uuid, position: i64, month: chrono::DateTime<chrono::Utc>, lines: &[QuotaLine]) {
        let mut kept = self.0.lock().expect("not poisoned");
        if kept.len() >= Self::CAPACITY && !kept.contains_key(&tenant) {
            kept.clear();
        }
        kept.insert(tenant, (position, month, lines.to_vec()));
    }
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
