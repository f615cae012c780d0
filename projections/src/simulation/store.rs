//! The simulations asked for (`simulations`): each one's request, progress, outcome and
//! result. A simulation runs on the instance that accepted it; its heartbeat tells the others
//! that it is still alive (a running one without a heartbeat for 60 s reads as failed).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Figures, SimulationResult};

/// The simulation store.
#[derive(Debug, Clone)]
pub struct Simulations {
    pool: PgPool,
}

/// A simulation as stored, with its result (or, in lists, its totals).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SimulationRow<T> {
    pub id: Uuid,
    /// `running`, `done` or `failed` (a running one without a heartbeat reads as `failed`).
    pub status: String,
    /// 0 to 1.
    pub progress: f64,
    pub window_from: DateTime<Utc>,
    pub window_to: DateTime<Utc>,
    /// `{plans, tenants}` as asked.
    pub request: Value,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The result (or its totals), once done.
    pub result: Option<Json<T>>,
}

const SELECT: &str = "SELECT id,
        CASE WHEN status = 'running' AND heartbeat_at < now() - interval '60 seconds' THEN 'failed' ELSE status END AS status,
        progress, window_from, window_to, request, created_at, finished_at,
        CASE WHEN status = 'running' AND heartbeat_at < now() - interval '60 seconds'
             THEN 'interrupted: the instance running it stopped' ELSE error END AS error";

impl Simulations {
    /// The store on `pool` (the primary: simulations are written here).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records simulation `id` as running.
    pub async fn start(
        &self,
        id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        request: &Value,
        at: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO simulations (id, status, window_from, window_to, request, created_at) VALUES ($1, 'running', $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(request)
        .bind(at)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The heartbeat of running simulation `id`, with its progress (kept below 1 until done).
    pub async fn heartbeat(&self, id: Uuid, progress: f64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE simulations SET progress = least($2, 0.99), heartbeat_at = now() WHERE id = $1 AND status = 'running'")
            .bind(id)
            .bind(progress)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Simulation `id` is done with `result`.
    pub async fn finish(&self, id: Uuid, result: &SimulationResult, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE simulations SET status = 'done', progress = 1, result = $2, finished_at = $3, heartbeat_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(Json(result))
        .bind(at)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Simulation `id` failed with `error`.
    pub async fn fail(&self, id: Uuid, error: &str, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE simulations SET status = 'failed', error = $2, finished_at = $3, heartbeat_at = now() WHERE id = $1")
            .bind(id)
            .bind(error)
            .bind(at)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Simulation `id` with its result.
    pub async fn find(&self, id: Uuid) -> Result<Option<SimulationRow<SimulationResult>>, sqlx::Error> {
        sqlx::query_as(&format!("{SELECT}, result FROM simulations WHERE id = $1")).bind(id).fetch_optional(&self.pool).await
    }

    /// Up to `limit` simulations created before `before` (an instant and an id), newest
    /// first, each with its result's totals.
    pub async fn list(&self, before: Option<(DateTime<Utc>, Uuid)>, limit: i64) -> Result<Vec<SimulationRow<Figures>>, sqlx::Error> {
        sqlx::query_as(&format!(
            "{SELECT}, result -> 'totals' AS result FROM simulations
             WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(before.map(|c| c.0))
        .bind(before.map(|c| c.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }
}
