//! The ordered event log as NDJSON, for consumers that catch up (`GET /v1/events`).

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The log route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// One JSON object per line, in position order. The admin sees every tenant's events (or one
/// tenant's with `X-Tenant-ID`); a tenant key sees its own. `limit` is 1 to 10000 (default
/// 1000); pass the last `position` seen as `after` to continue.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "NDJSON, one event per line: {position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at}", body = String, content_type = "application/x-ndjson"),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn events(State(state): State<AppState>, caller: Caller, ApiQuery(q): ApiQuery<EventsQuery>) -> Result<impl IntoResponse, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::validation("after", "must be a position (0 or more)"));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 10000"));
    }
    let tenant = caller.tenant_scope();
    let events = state.log().read_after(after, limit, tenant).await?;
    let mut body = Vec::with_capacity(events.len() * 512);
    for event in &events {
        serde_json::to_writer(&mut body, event).map_err(ApiError::internal)?;
        body.push(b'\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(events))]
pub struct Docs;
