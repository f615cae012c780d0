//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// `GET /`: where to start.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Index {
    /// `saas-ledger`.
    name: &'static str,
    /// The server's version.
    version: &'static str,
    /// `/docs`.
    docs: &'static str,
    /// `/openapi.json`.
    openapi: &'static str,
    /// `/healthz`.
    health: &'static str,
    /// `/readyz`.
    ready: &'static str,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    status: &'static str,
    /// This instance's id.
    instance: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready`.
    status: &'static str,
}

/// Where to start: the API's documentation, its OpenAPI document and the health checks.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "{name, version, docs, openapi, health, ready}: links to start from", body = Index)
    ),
    security(()),
)]
async fn index() -> Json<Index> {
    Json(Index {
        name: "saas-ledger",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        openapi: "/openapi.json",
        health: "/healthz",
        ready: "/readyz",
    })
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = Health)
    ),
    security(()),
)]
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", instance: state.instance().to_owned() })
}

/// The database answers and every migration is applied; 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Database reachable and migrations applied", body = Ready),
        (status = 503, description = "NOT_READY", body = crate::openapi::ErrorBody)
    ),
    security(()),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    match commands::db::migrations_applied(state.pool()).await {
        Ok(true) => Ok(Json(Ready { status: "ready" })),
        Ok(false) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", "database migrations are not all applied")),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", "the database is not reachable"))
        }
    }
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(index, healthz, readyz))]
pub struct Docs;
