//! The audit trail: `GET /v1/audit` (filters, cursor pagination) and `GET /v1/audit/verify`.
//! A tenant key sees its own chain; the admin sees every chain, or one with `X-Tenant-ID`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::audit::reads::AuditFilter;
use projections::audit::{AuditEntry, Verification};
use serde::Deserialize;

use super::{page_limit, Page};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The audit routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(list)).route("/v1/audit/verify", get(verify))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    actor: Option<String>,
    aggregate_type: Option<String>,
    cursor: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// `GET /v1/audit?from&to&actor&aggregate_type&cursor&limit`: entries in position order;
/// `next_cursor` is the last position of the page.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(AuditQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of audit entries with their hash chain", body = Page<AuditEntry>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let filter = AuditFilter { tenant_id: caller.tenant_scope(), from: q.from, to: q.to, actor: q.actor, aggregate_type: q.aggregate_type };
    let rows = state.reads().audit().page(filter, q.cursor.unwrap_or(0), limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |e| e.position.to_string())))
}

/// `GET /v1/audit/verify` → `{valid, checked, first_bad_position}`.
#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "{valid, checked, first_bad_position}", body = Verification),
        crate::openapi::AuthErrors
    ),
)]
async fn verify(State(state): State<AppState>, caller: Caller) -> Result<Json<Verification>, ApiError> {
    state.settle_all().await;
    Ok(Json(state.reads().audit().verify(caller.tenant_scope()).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, verify))]
pub struct Docs;
