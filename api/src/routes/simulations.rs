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
use projections::simulation::store::SimulationRow;
use projections::simulation::{simulate, Figures, SimulationInput, SimulationResult};
use serde::{Deserialize, Serialize};
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
        (status = 202, description = "Started: {id, status: running, progress, from, to, plans, tenants, created_at}; Location names it", body = SimulationView),
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
    state.simulations().start(id, body.from, body.to, &request, created_at).await?;
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
    let store = state.simulations().clone();
    let heartbeat = {
        let (store, done, total) = (store.clone(), done.clone(), total.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                let (done, total) = (done.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
                let progress = if total == 0 { 0.0 } else { done as f64 / total as f64 };
                let _ = store.heartbeat(id, progress).await;
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
    let outcome = simulate(state.pool(), &input, &progress).await;
    heartbeat.abort();
    let finished_at = state.now();
    let recorded = match outcome {
        Ok(result) => store.finish(id, &result, finished_at).await,
        Err(e) => {
            tracing::warn!(simulation = %id, error = %e, "simulation failed");
            store.fail(id, &e.to_string(), finished_at).await
        }
    };
    if let Err(e) = recorded {
        tracing::error!(simulation = %id, error = %e, "recording the simulation's outcome failed");
    }
}

/// A simulation: what was asked, how far it got, and its result once done.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SimulationView {
    #[serde(flatten)]
    head: SimulationHead,
    /// The result, once done.
    result: Option<SimulationResult>,
}

/// A simulation in a list: its result's totals only.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SimulationSummary {
    #[serde(flatten)]
    head: SimulationHead,
    /// The result's totals, once done.
    totals: Option<Figures>,
}

/// What every answer about a simulation says: what was asked and how far it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SimulationHead {
    /// Its id.
    id: Uuid,
    /// `running`, `done` or `failed`.
    #[schema(pattern = "^(running|done|failed)$")]
    status: String,
    /// 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    progress: f64,
    /// The window's start.
    from: DateTime<Utc>,
    /// The window's end.
    to: DateTime<Utc>,
    /// The candidate plans' codes.
    plans: Vec<String>,
    /// The tenants re-billed (`null`: all).
    tenants: Option<Vec<Uuid>>,
    /// Asked.
    created_at: DateTime<Utc>,
    /// Done or failed.
    finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    error: Option<String>,
}

impl SimulationHead {
    /// What `row` says of the simulation (its progress to three places), and its result.
    fn of<T>(row: SimulationRow<T>) -> (Self, Option<T>) {
        let plans = row.request.get("plans").cloned().and_then(|p| serde_json::from_value(p).ok()).unwrap_or_default();
        let tenants = row.request.get("tenants").cloned().and_then(|t| serde_json::from_value(t).ok());
        let head = Self {
            id: row.id,
            status: row.status,
            progress: (row.progress * 1000.0).round() / 1000.0,
            from: row.window_from,
            to: row.window_to,
            plans,
            tenants,
            created_at: row.created_at,
            finished_at: row.finished_at,
            error: row.error,
        };
        (head, row.result.map(|r| r.0))
    }
}

impl From<SimulationRow<SimulationResult>> for SimulationView {
    fn from(row: SimulationRow<SimulationResult>) -> Self {
        let (head, result) = SimulationHead::of(row);
        Self { head, result }
    }
}

impl From<SimulationRow<Figures>> for SimulationSummary {
    fn from(row: SimulationRow<Figures>) -> Self {
        let (head, totals) = SimulationHead::of(row);
        Self { head, totals }
    }
}

async fn load(state: &AppState, id: Uuid) -> Result<Option<SimulationView>, ApiError> {
    Ok(state.simulations().find(id).await?.map(SimulationView::from))
}

#[utoipa::path(
    get,
    path = "/v1/admin/simulations/{id}",
    tag = "admin",
    params(("id" = Uuid, Path, description = "The simulation")),
    responses(
        (status = 200, description = "{id, status: running|done|failed, progress, from, to, plans, tenants, created_at, finished_at, error, result: {totals, by_month, by_plan, by_tenant, over_limit, ...} (null until done)}", body = SimulationView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<SimulationView>, ApiError> {
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
        (status = 200, description = "A page of simulations, newest first; each with its result's `totals` (null until done)", body = Page<SimulationSummary>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<SimulationSummary>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let rows = state.simulations().list(cursor, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.created_at, r.id));
    Ok(Json(Page {
        data: page.data.into_iter().map(SimulationSummary::from).collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(start, read, list), components(schemas(StartSimulation)))]
pub struct Docs;
