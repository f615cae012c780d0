//! Billable metrics: the catalog of what usage can be metered and how a period's facts combine
//! (`POST /v1/metrics` by the admin; `GET /v1/metrics` public, like plans). A definition never
//! changes once made, so a period billed under it stays billed under it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::usage::metrics::{Aggregation, MetricDefinition, Rounding};
use domain::usage::MetricName;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The metric routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/metrics", post(create).get(list)).route("/v1/metrics/{code}", get(read))
}

/// A new billable metric.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMetric {
    /// The code facts and plan charges name it by: `[a-z][a-z0-9_]{0,63}`, not a built-in's.
    #[schema(example = "gb_hours", pattern = "^[a-z][a-z0-9_]{0,63}$")]
    code: String,
    /// A name for people (1 to 100 characters).
    #[schema(example = "Storage (GB-hours)")]
    name: String,
    /// How a period's facts combine: `sum`, `max`, `last` or `unique_count` (facts carry `value`
    /// and the figure is the number of distinct values).
    #[schema(example = "sum", pattern = "^(sum|max|last|unique_count)$")]
    aggregation: String,
    /// The unit, for people (at most 32 characters).
    #[schema(example = "GB-h")]
    unit: Option<String>,
    /// Decimal places the period's figure keeps (0 to 6; default 0).
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 6, example = 2)]
    precision: Option<Value>,
    /// How the figure is rounded to them, once, after aggregation and before pricing:
    /// `half_up` (default), `up` or `down`.
    #[schema(example = "half_up", pattern = "^(half_up|up|down)$")]
    rounding: Option<String>,
}

/// A billable metric.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BillableMetric)]
pub struct MetricView {
    /// Its code.
    code: String,
    /// Its name.
    name: String,
    /// `sum`, `max`, `last` or `unique_count`.
    #[schema(pattern = "^(sum|max|last|unique_count)$")]
    aggregation: &'static str,
    /// Its unit.
    unit: Option<String>,
    /// Decimal places of the period's figure.
    #[schema(minimum = 0, maximum = 6)]
    precision: u32,
    /// `half_up`, `up` or `down`.
    #[schema(pattern = "^(half_up|up|down)$")]
    rounding: &'static str,
    /// Whether it is one of the built-ins (`api_calls`, `sms`, `storage_bytes`, `tickets`).
    built_in: bool,
    /// When it was defined (`null` for a built-in).
    created_at: Option<DateTime<Utc>>,
}

impl MetricView {
    fn of(definition: &MetricDefinition, created_at: Option<DateTime<Utc>>) -> Self {
        Self {
            code: definition.code.to_string(),
            name: definition.name.clone(),
            aggregation: definition.aggregation.as_str(),
            unit: definition.unit.clone(),
            precision: definition.precision,
            rounding: definition.rounding.as_str(),
            built_in: created_at.is_none(),
            created_at,
        }
    }
}

/// `POST /v1/metrics` (admin): defines a billable metric → 201. A code taken (a built-in's or an
/// earlier definition's): 409 `CONFLICT` (`details.field = "code"`).
#[utoipa::path(
    post,
    path = "/v1/metrics",
    tag = "metrics",
    params(crate::openapi::IdempotencyHeader),
    request_body = CreateMetric,
    responses(
        (status = 201, description = "The metric: {code, name, aggregation, unit, precision, rounding, built_in, created_at}", body = MetricView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 409, description = "CONFLICT: the code is taken (details.field = code)", body = crate::openapi::ErrorBody)
    ),
)]
async fn create(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<CreateMetric>,
) -> Result<(StatusCode, Json<MetricView>), ApiError> {
    let precision = match &body.precision {
        None => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p <= domain::usage::MAX_SCALE)
            .ok_or_else(|| ApiError::validation("precision", "must be a whole number from 0 to 6"))?,
        Some(_) => return Err(ApiError::validation("precision", "must be a whole number from 0 to 6")),
    };
    let definition = MetricDefinition {
        code: MetricName::parse(&body.code).map_err(|e| e.at("code"))?,
        name: body.name,
        aggregation: Aggregation::parse(&body.aggregation)?,
        unit: body.unit,
        precision,
        rounding: body.rounding.as_deref().map(Rounding::parse).transpose()?.unwrap_or_default(),
    };
    let context = state.context(None, caller.actor());
    let app = state.clone();
    let committed = state
        .detach(async move {
            let committed = app.metrics().define(definition, &context).await?;
            app.settle_all().await;
            Ok(committed)
        })
        .await?;
    let definition = committed.state.definition.as_ref().ok_or_else(|| ApiError::internal("the metric was not defined"))?;
    Ok((StatusCode::CREATED, Json(MetricView::of(definition, committed.state.defined_at))))
}

/// `GET /v1/metrics`: every billable metric, the built-ins first, then by code. Public (no token
/// needed), like plans.
#[utoipa::path(
    get,
    path = "/v1/metrics",
    tag = "metrics",
    responses((status = 200, description = "Every metric", body = Vec<MetricView>)),
    security(()),
)]
async fn list(State(state): State<AppState>) -> Result<Json<Vec<MetricView>>, ApiError> {
    let rows = state.reads().catalog().metrics().await?;
    Ok(Json(rows.iter().map(|r| MetricView::of(&r.definition, r.defined_at)).collect()))
}

/// `GET /v1/metrics/{code}`: one metric. Public.
#[utoipa::path(
    get,
    path = "/v1/metrics/{code}",
    tag = "metrics",
    params(("code" = String, Path, description = "The metric's code")),
    responses((status = 200, description = "The metric", body = MetricView), crate::openapi::NotFound),
    security(()),
)]
async fn read(State(state): State<AppState>, Path(code): Path<String>) -> Result<Json<MetricView>, ApiError> {
    if MetricName::parse(&code).is_err() {
        return Err(ApiError::not_found("metric"));
    }
    let row = state.reads().catalog().metric(&code).await?.ok_or_else(|| ApiError::not_found("metric"))?;
    Ok(Json(MetricView::of(&row.definition, row.defined_at)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, read), components(schemas(CreateMetric)))]
pub struct Docs;
