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
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and every migration is applied; 503 otherwise.
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
