//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiError;

/// `/healthz` and `/readyz`.
pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index)).route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// Where to start: the API's documentation, its OpenAPI document and the health checks.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses(
        (status = 200, description = "{name, version, docs, openapi, health, ready}: links to start from", body = crate::schemas::Index)
    ),
    security(()),
)]
async fn index() -> Json<Value> {
    Json(json!({
        "name": "saas-ledger",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz"
    }))
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = crate::schemas::Health)
    ),
    security(()),
)]
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "instance": state.instance()}))
}

/// The database answers and every migration is applied; 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Database reachable and migrations applied", body = crate::schemas::Ready),
        (status = 503, description = "NOT_READY", body = crate::openapi::ErrorBody)
    ),
    security(()),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match commands::db::migrations_applied(state.pool()).await {
        Ok(true) => Ok(Json(json!({"status": "ready"}))),
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
