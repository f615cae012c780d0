//! Price simulations (admin): re-bill the real history under a candidate catalog, in the
//! background (`projections::simulation`), and report actual against simulated revenue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::plan::Plan;
use projections::simulation::{simulate, SimulationInput};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::plans::{plan_from_body, PublishPlan};
use super::{page_limit, parse_time_cursor, time_cursor, Page, PageQuery};
use crate::app::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};

/// The simulation routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/simulations", get(list).post(start)).route("/v1/admin/simulations/{id}", get(read))
}

/// The most candidate plans one simulation takes.
const MAX_PLANS: usize = 100;
/// The most tenants one simulation can be limited to.
const MAX_TENANTS: usize = 10_000;
/// How often a running simulation records its progress and that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// `POST /v1/admin/simulations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSimulation {
    /// Invoices issued at or after this instant count.
    from: DateTime<Utc>,
    /// Invoices issued before this instant count (after `from`).
    to: DateTime<Utc>,
    /// Candidate plans, each a body as for `POST /v1/plans`: it stands, for this simulation
    /// only, for every version of the plan with its `code`. Empty: the real catalog (the
    /// simulation then reproduces every invoice).
    #[schema(value_type = Vec<PublishPlan>, max_items = 100)]
    plans: Vec<Value>,
    /// Only these tenants, by id or code (absent: every tenant).
    #[schema(max_items = 10000)]
    tenants: Option<Vec<String>>,
}

/// Starts a simulation in the background: 202 with its id; `GET /v1/admin/simulations/{id}`
/// follows its progress and has the result when it is `done`. Nothing is written to the event
/// log or to the read models.
#[utoipa::path(
    post,
    path = "/v1/admin/simulations",
    tag = "admin",
    params(crate::openapi::IdempotencyHeader),
    request_body = StartSimulation,
    responses(
        (status = 202, description = "Started: {id, status: running, progress, from, to, plans, tenants, created_at}; Location names it", body = crate::schemas::SimulationView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn start(State(state): State<AppState>, _: Admin, ApiJson(body): ApiJson<StartSimulation>) -> Result<Response, ApiError> {
    if body.to <= body.from {
        return Err(ApiError::validation("to", "must be after from"));
    }
    if body.plans.len() > MAX_PLANS {
        return Err(ApiError::validation("plans", format!("must have at most {MAX_PLANS} plans")));
    }
    let mut plans: Vec<Plan> = Vec::new();
    for (i, raw) in body.plans.into_iter().enumerate() {
        let field = format!("plans[{i}]");
        let parsed: PublishPlan = serde_json::from_value(raw).map_err(|e| ApiError::validation(&field, e.to_string()))?;
        let plan = plan_from_body(parsed).map_err(|e| prefixed(e, &field))?;
        if plans.iter().any(|p| p.code == plan.code) {
            return Err(ApiError::validation(&format!("{field}.code"), format!("{} is given twice", plan.code)));
        }
        plans.push(plan);
    }
    let tenants = match &body.tenants {
        None => None,
        Some(list) if list.len() > MAX_TENANTS => {
            return Err(ApiError::validation("tenants", format!("must have at most {MAX_TENANTS} tenants")));
        }
        Some(list) => {
            let mut ids = Vec::with_capacity(list.len());
            for (i, reference) in list.iter().enumerate() {
                let id =
                    state.resolve_tenant(reference).await.map_err(|_| ApiError::validation(&format!("tenants[{i}]"), "no such tenant"))?;
                if !state.tenant_exists(id).await? {
                    return Err(ApiError::validation(&format!("tenants[{i}]"), "no such tenant"));
                }
                ids.push(id);
            }
            Some(ids)
        }
    };
    let id = Uuid::now_v7();
    let request = json!({
        "plans": plans.iter().map(|p| p.code.to_string()).collect::<Vec<_>>(),
        "tenants": tenants,
    });
    let created_at = state.now();
    sqlx::query("INSERT INTO simulations (id, status, window_from, window_to, request, created_at) VALUES ($1, 'running', $2, $3, $4, $5)")
        .bind(id)
        .bind(body.from)
        .bind(body.to)
        .bind(&request)
        .bind(created_at)
        .execute(state.pool())
        .await?;
    // The answer is the simulation as accepted (`running`), read before it starts: a small one
    // can be done before the answer would otherwise be read.
    let view = load(&state, id).await?.ok_or_else(|| ApiError::internal("the simulation just recorded is gone"))?;
    let input = SimulationInput { from: body.from, to: body.to, plans, tenants };
    // Not tied to the request: the client may go away; the simulation goes on.
    tokio::spawn(run(state.clone(), id, input));
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/admin/simulations/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A plan body's validation error, named under `plans[i]`.
fn prefixed(mut error: ApiError, prefix: &str) -> ApiError {
    if let Some(Value::String(field)) = error.details.get_mut("field") {
        *field = format!("{prefix}.{field}");
    }
    error
}

/// Runs simulation `id` to its end, recording progress, the result or the failure.
async fn run(state: AppState, id: Uuid, input: SimulationInput) {
    let done = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let pool = state.pool().clone();
    let heartbeat = {
        let (pool, done, total) = (pool.clone(), done.clone(), total.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let (done, total) = (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
                let progress = if total == 0 { 0.0 } else { done as f64 / total as f64 };
                let _ = sqlx::query(
                    "UPDATE simulations SET progress = least($2, 0.99), heartbeat_at = now() WHERE id = $1 AND status = 'running'",
                )
                .bind(id)
                .bind(progress)
                .execute(&pool)
                .await;
            }
        })
    };
    let progress = {
        let (done, total) = (done.clone(), total.clone());
        move |d: usize, t: usize| {
            done.store(d, Ordering::Relaxed);
            total.store(t, Ordering::Relaxed);
        }
    };
    let outcome = simulate(&pool, &input, &progress).await;
    heartbeat.abort();
    let finished_at = state.now();
    let recorded = match outcome {
        Ok(result) => {
            let result = serde_json::to_value(&result).unwrap_or(Value::Null);
            sqlx::query(
                "UPDATE simulations SET status = 'done', progress = 1, result = $2, finished_at = $3, heartbeat_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(result)
            .bind(finished_at)
            .execute(&pool)
            .await
        }
        Err(e) => {
            tracing::warn!(simulation = %id, error = %e, "simulation failed");
            sqlx::query("UPDATE simulations SET status = 'failed', error = $2, finished_at = $3, heartbeat_at = now() WHERE id = $1")
                .bind(id)
                .bind(e.to_string())
                .bind(finished_at)
                .execute(&pool)
                .await
        }
    };
    if let Err(e) = recorded {
        tracing::error!(simulation = %id, error = %e, "recording the simulation's outcome failed");
    }
}

/// A simulation's row as the API shows it: a `running` one whose instance stopped reads as
/// `failed`.
const SELECT: &str = "SELECT id,
        CASE WHEN status = 'running' AND heartbeat_at < now() - interval '60 seconds' THEN 'failed' ELSE status END,
        progress, window_from, window_to, request, created_at, finished_at,
        CASE WHEN status = 'running' AND heartbeat_at < now() - interval '60 seconds'
             THEN 'interrupted: the instance running it stopped' ELSE error END";

type Row = (Uuid, String, f64, DateTime<Utc>, DateTime<Utc>, Value, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

fn view(row: Row, result: Option<Value>) -> Value {
    let mut view = summary(row);
    view["result"] = result.unwrap_or(Value::Null);
    view
}

fn summary(row: Row) -> Value {
    let (id, status, progress, from, to, request, created_at, finished_at, error) = row;
    json!({
        "id": id,
        "status": status,
        "progress": (progress * 1000.0).round() / 1000.0,
        "from": from,
        "to": to,
        "plans": request.get("plans").cloned().unwrap_or(Value::Array(Vec::new())),
        "tenants": request.get("tenants").cloned().unwrap_or(Value::Null),
        "created_at": created_at,
        "finished_at": finished_at,
        "error": error,
    })
}

async fn load(state: &AppState, id: Uuid) -> Result<Option<Value>, ApiError> {
    let row: Option<(Row, Option<Value>)> = sqlx::query_as::<
        _,
        (Uuid, String, f64, DateTime<Utc>, DateTime<Utc>, Value, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>, Option<Value>),
    >(&format!("{SELECT}, result FROM simulations WHERE id = $1"))
    .bind(id)
    .fetch_optional(state.pool())
    .await?
    .map(|(a, b, c, d, e, f, g, h, i, result)| ((a, b, c, d, e, f, g, h, i), result));
    Ok(row.map(|(row, result)| view(row, result)))
}

/// `GET /v1/admin/simulations/{id}`: progress, and the result once `done`.
#[utoipa::path(
    get,
    path = "/v1/admin/simulations/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The simulation")),
    responses(
        (status = 200, description = "{id, status: running|done|failed, progress, from, to, plans, tenants, created_at, finished_at, error, result: {totals, by_month, by_plan, by_tenant, over_limit, ...} (null until done)}", body = crate::schemas::SimulationView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::not_found("simulation"))?;
    load(&state, id).await?.map(Json).ok_or_else(|| ApiError::not_found("simulation"))
}

/// `GET /v1/admin/simulations`: the simulations, newest first, each with its totals (the
/// full result is on the simulation's own page).
#[utoipa::path(
    get,
    path = "/v1/admin/simulations",
    tag = "admin",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of simulations, newest first; each with its result's `totals` (null until done)", body = crate::schemas::SimulationPage),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn list(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<PageQuery>) -> Result<Json<Page<Value>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    type ListRow =
        (Uuid, String, f64, DateTime<Utc>, DateTime<Utc>, Value, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>, Option<Value>);
    let rows: Vec<ListRow> = sqlx::query_as(&format!(
        "{SELECT}, result -> 'totals' FROM simulations
         WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
         ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit + 1)
    .fetch_all(state.pool())
    .await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.6, r.0));
    Ok(Json(Page {
        data: page
            .data
            .into_iter()
            .map(|(a, b, c, d, e, f, g, h, i, totals)| {
                let mut item = summary((a, b, c, d, e, f, g, h, i));
                item["totals"] = totals.unwrap_or(Value::Null);
                item
            })
            .collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
    }))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(start, read, list), components(schemas(StartSimulation)))]
pub struct Docs;
