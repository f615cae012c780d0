//! `GET /v1/aggregates/{type}/{id}?as_of=<time>|version=<n>`: an aggregate's state rebuilt
//! from its events at that point (now, without either). A tenant key sees its own aggregates.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::replay::{ReplayError, Replayed, Until};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The replay route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/aggregates/{aggregate_type}/{id}", get(read))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Point {
    as_of: Option<DateTime<Utc>>,
    #[param(minimum = 0)]
    version: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/aggregates/{aggregate_type}/{id}",
    tag = "events",
    params(("aggregate_type" = String, Path, description = "Tenant, Subscription, Plan, Resource, Booking, Usage (a fact recorded on its own, id `<tenant>:<key>`), UsageBatch (a batch of facts) or Books (id `revenue`, admin: the months of revenue closed)"), ("id" = String, Path, description = "Aggregate id"), Point),
    responses(
        (status = 200, description = "The state rebuilt from its events at that point", body = Replayed),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::NotFound
    ),
)]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((aggregate_type, id)): Path<(String, String)>,
    ApiQuery(point): ApiQuery<Point>,
) -> Result<Json<Replayed>, ApiError> {
    let until = match (point.as_of, point.version) {
        (Some(_), Some(_)) => return Err(ApiError::validation("version", "give as_of or version, not both")),
        (Some(at), None) => Until::AsOf(at),
        (None, Some(v)) if v >= 0 => Until::Version(v),
        (None, Some(_)) => return Err(ApiError::validation("version", "must be 0 or more")),
        (None, None) => Until::Now,
    };
    let tenant = caller.tenant_scope();
    match state.log().replay(&aggregate_type, &id, until, tenant).await {
        Ok(Some(replayed)) => Ok(Json(replayed)),
        Ok(None) | Err(ReplayError::UnknownType(_)) => Err(ApiError::not_found("aggregate")),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(read))]
pub struct Docs;
