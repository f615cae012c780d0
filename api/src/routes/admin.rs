//! Platform operations: projection status and rebuilds, and the test clock.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::billing_run::BillingReport;
use commands::clock::Clock;
use projections::RunInfo;
use serde::{Deserialize, Serialize};

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
        .route("/v1/admin/cluster", get(cluster))
}

/// The database hosts this server uses: the primary it writes to and the replicas it reads
/// from, as its watches last saw them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The host that takes the writes.
    pub primary: PrimaryView,
    /// `SAAS_LEDGER_REPLICA_URLS`, each as last seen (`reachable: false` when it did not answer).
    pub replicas: Vec<projections::replicas::ReplicaView>,
}

/// The primary.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PrimaryView {
    /// `host:port`.
    pub host: String,
    /// Every host of a multi-host `DATABASE_URL` (the primary among them), `host:port` each.
    pub hosts: Vec<String>,
    /// How many times this server moved to a new primary since it started.
    pub failovers: u64,
}

/// The primary and the replicas: `{primary: {host, hosts, failovers}, replicas: [{host, reachable,
/// lag_bytes, lag_seconds, applied_position}]}`.
#[utoipa::path(
    get,
    path = "/v1/admin/cluster",
    tag = "admin",
    responses(
        (status = 200, description = "{primary: {host}, replicas: [{host, reachable, lag_bytes, lag_seconds}]}", body = ClusterView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden
    ),
)]
async fn cluster(State(state): State<AppState>, _: Admin) -> Result<Json<ClusterView>, ApiError> {
    let primary = match commands::cluster::Cluster::of(state.pool()) {
        Some(cluster) => {
            let (hosts, host) = cluster.hosts();
            PrimaryView { host, hosts, failovers: cluster.moves() }
        }
        None => {
            let options = state.pool().connect_options();
            let host = format!("{}:{}", options.get_host(), options.get_port());
            PrimaryView { host: host.clone(), hosts: vec![host], failovers: 0 }
        }
    };
    Ok(Json(ClusterView { primary, replicas: state.replicas().views() }))
}

/// Every projection run that is not retired: `{name, version, generation, position, head, lag,
/// status, last_error, last_error_position}`.
#[utoipa::path(
    get,
    path = "/v1/admin/projections",
    tag = "admin",
    responses(
        (status = 200, description = "[{name, version, generation, position, head, lag, status, last_error, last_error_position}]", body = Vec<RunInfo>),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden
    ),
)]
async fn projections(State(state): State<AppState>, _: Admin) -> Result<Json<Vec<RunInfo>>, ApiError> {
    Ok(Json(state.projections().status().await?))
}

/// Starts a blue/green rebuild of one projection (or `all`); reads keep being served by the
/// live run until the new one has caught up and is swapped in. 202 with the new runs.
#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    tag = "admin",
    params(("name" = String, Path, description = "A projection name, or all"), crate::openapi::IdempotencyHeader),
    responses(
        (status = 202, description = "The runs started: reads stay on the live model until the new one catches up", body = RebuildStarted),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound,
        crate::openapi::Forbidden
    ),
)]
async fn rebuild(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RebuildStarted>), ApiError> {
    if name != "all" && !state.projections().names().contains(&name.as_str()) {
        return Err(ApiError::not_found("projection"));
    }
    let started = state.projections().rebuild(&name).await.map_err(ApiError::internal)?;
    let rebuilding = started.into_iter().map(|(name, generation)| RebuildRun { name, generation, status: "building" }).collect();
    Ok((StatusCode::ACCEPTED, Json(RebuildStarted { rebuilding })))
}

/// The longest single move of the test clock (about five years).
/// A rebuild started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildStarted {
    /// The runs started.
    rebuilding: Vec<RebuildRun>,
}

/// A run a rebuild started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildRun {
    /// The projection.
    name: String,
    /// The new run's number.
    generation: i32,
    /// `building`.
    status: &'static str,
}

/// The test clock.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Clock)]
pub struct ClockView {
    /// The server's time now.
    now: DateTime<Utc>,
    /// What the billing cycle did up to it (`PUT` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    billing: Option<BillingReport>,
}

const MAX_CLOCK_JUMP_DAYS: i64 = 5 * 366;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClockBody {
    now: DateTime<Utc>,
}

fn manual_clock(state: &AppState) -> Result<&commands::clock::ManualClock, ApiError> {
    state.manual_clock().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "this server has no test clock: start it with SAAS_LEDGER_TEST_CLOCK=1 to move its clock by hand",
        )
        .with("setting", "SAAS_LEDGER_TEST_CLOCK")
    })
}

/// `PUT /v1/admin/clock {now}` (only with `SAAS_LEDGER_TEST_CLOCK=1`): moves the server's
/// clock forward and runs the billing cycle up to the new time; backwards is 409.
#[utoipa::path(
    put,
    path = "/v1/admin/clock",
    tag = "admin",
    request_body = ClockBody,
    responses(
        (status = 200, description = "{now, billing}: the clock moved and the billing cycle ran up to it", body = ClockView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 404, description = "NOT_FOUND: the server runs without SAAS_LEDGER_TEST_CLOCK=1", body = crate::openapi::ErrorBody),
        (status = 409, description = "CLOCK_BACKWARDS", body = crate::openapi::ErrorBody)
    ),
)]
async fn set_clock(State(state): State<AppState>, _: Admin, ApiJson(body): ApiJson<ClockBody>) -> Result<Json<ClockView>, ApiError> {
    let clock = manual_clock(&state)?;
    // Each billing period passed is work (renewals, invoices) for every tenant: a jump of
    // centuries would tie the server up for hours. Long simulations move in steps.
    if body.now > clock.now() + chrono::Duration::days(MAX_CLOCK_JUMP_DAYS) {
        return Err(ApiError::validation("now", format!("move the test clock at most {MAX_CLOCK_JUMP_DAYS} days at a time")));
    }
    match clock.advance_to(body.now) {
        Ok(now) => {
            let billing = state.run_billing(now).await?;
            Ok(Json(ClockView { now, billing: Some(billing) }))
        }
        Err(now) => {
            Err(ApiError::new(StatusCode::CONFLICT, "CLOCK_BACKWARDS", "the test clock only moves forward").with("now", now.to_rfc3339()))
        }
    }
}

/// `GET /v1/admin/clock`: the test clock's time.
#[utoipa::path(
    get,
    path = "/v1/admin/clock",
    tag = "admin",
    responses(
        (status = 200, description = "{now}", body = ClockView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        (status = 404, description = "NOT_FOUND: no test clock", body = crate::openapi::ErrorBody)
    ),
)]
async fn get_clock(State(state): State<AppState>, _: Admin) -> Result<Json<ClockView>, ApiError> {
    Ok(Json(ClockView { now: manual_clock(&state)?.now(), billing: None }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BillingRunBody {
    as_of: Option<DateTime<Utc>>,
}

/// `POST /v1/admin/billing/run {as_of}`: runs the billing cycle as of an instant (default:
/// now) and reports what it did. Running it again for the same instant changes nothing.
#[utoipa::path(
    post,
    path = "/v1/admin/billing/run",
    tag = "admin",
    params(crate::openapi::IdempotencyHeader),
    request_body = Option<BillingRunBody>,
    responses(
        (status = 200, description = "What the billing run did", body = BillingReport),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn run_billing(
    State(state): State<AppState>,
    _: Admin,
    crate::extract::OptionalJson(body): crate::extract::OptionalJson<BillingRunBody>,
) -> Result<Json<BillingReport>, ApiError> {
    let now = state.now();
    let as_of = body.as_of.unwrap_or(now);
    // Billing as of the future would issue invoices for periods that have not started.
    if as_of > now {
        return Err(ApiError::validation("as_of", format!("must not be later than the server's clock ({})", now.to_rfc3339())));
    }
    Ok(Json(state.run_billing(as_of).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(projections, rebuild, set_clock, get_clock, run_billing, cluster))]
pub struct Docs;
