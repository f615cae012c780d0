//! Platform operations: projection status and rebuilds, and the test clock.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::clock::Clock;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The admin routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/projections", get(projections))
        .route("/v1/admin/projections/{name}/rebuild", post(rebuild))
        .route("/v1/admin/clock", put(set_clock).get(get_clock))
        .route("/v1/admin/billing/run", post(run_billing))
}

/// Every projection run that is not retired: `{name, version, generation, position, head, lag,
/// status, last_error, last_error_position}`.
async fn projections(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(serde_json::to_value(state.projections().status().await?).map_err(ApiError::internal)?))
}

/// Starts a blue/green rebuild of one projection (or `all`); reads keep being served by the
/// live run until the new one has caught up and is swapped in. 202 with the new runs.
async fn rebuild(State(state): State<AppState>, _: Admin, Path(name): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
    if name != "all" && !state.projections().names().contains(&name.as_str()) {
        return Err(ApiError::not_found("projection"));
    }
    let started = state.projections().rebuild(&name).await.map_err(ApiError::internal)?;
    let runs: Vec<Value> =
        started.into_iter().map(|(name, generation)| json!({"name": name, "generation": generation, "status": "building"})).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "rebuilding": runs }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    now: DateTime<Utc>,
}

fn manual_clock(state: &AppState) -> Result<&commands::clock::ManualClock, ApiError> {
    state.manual_clock().ok_or_else(|| ApiError::for_status(StatusCode::NOT_FOUND))
}

/// `PUT /v1/admin/clock {now}` (only with `SAAS_LEDGER_TEST_CLOCK=1`): moves the server's
/// clock forward and runs the billing cycle up to the new time; backwards is 409.
async fn set_clock(State(state): State<AppState>, _: Admin, ApiJson(body): ApiJson<ClockBody>) -> Result<Json<Value>, ApiError> {
    let clock = manual_clock(&state)?;
    match clock.advance_to(body.now) {
        Ok(now) => {
            let billing = state.run_billing(now).await?;
            Ok(Json(json!({ "now": now, "billing": billing })))
        }
        Err(now) => {
            Err(ApiError::new(StatusCode::CONFLICT, "CLOCK_BACKWARDS", "the test clock only moves forward").with("now", now.to_rfc3339()))
        }
    }
}

/// `GET /v1/admin/clock`: the test clock's time.
async fn get_clock(State(state): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "now": manual_clock(&state)?.now() })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BillingRunBody {
    as_of: Option<DateTime<Utc>>,
}

/// `POST /v1/admin/billing/run {as_of}`: runs the billing cycle as of an instant (default:
/// now) and reports what it did. Running it again for the same instant changes nothing.
async fn run_billing(
    State(state): State<AppState>,
    _: Admin,
    crate::extract::OptionalJson(body): crate::extract::OptionalJson<BillingRunBody>,
) -> Result<Json<Value>, ApiError> {
    let as_of = body.as_of.unwrap_or_else(|| state.now());
    let report = state.run_billing(as_of).await?;
    Ok(Json(serde_json::to_value(report).map_err(ApiError::internal)?))
}
