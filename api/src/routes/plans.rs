//! The plan catalog: the latest version of every plan, and publishing new versions (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use domain::billing::money::{format, parse_price};
use domain::plan::{Plan, PlanCode, PlanLimits};
use domain::values::{CurrencyCode, DisplayName};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The catalog routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/plans", get(list).post(publish))
}

/// A plan as the API shows it (money as two-decimal strings).
pub fn plan_json(plan: &Plan) -> Value {
    json!({
        "code": plan.code,
        "name": plan.name,
        "version": plan.version,
        "monthly_price": format(plan.monthly_price),
        "yearly_price": format(plan.yearly_price),
        "currency": plan.currency,
        "limits": plan.limits,
        "features": plan.features,
        "rate_limit_per_minute": plan.rate_limit_per_minute,
    })
}

/// `GET /v1/plans`: the latest version of each plan, cheapest first. Public (no token needed):
/// pricing pages show it.
#[utoipa::path(
    get,
    path = "/v1/plans",
    tag = "plans",
    responses(
        (status = 200, description = "[{code, name, version, monthly_price, yearly_price, currency, limits, features, rate_limit_per_minute}]", body = serde_json::Value)
    ),
    security(()),
)]
async fn list(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let plans: Vec<sqlx::types::Json<Plan>> = sqlx::query_scalar(
        "SELECT definition FROM (SELECT DISTINCT ON (code) * FROM rm.plans ORDER BY code, version DESC) p ORDER BY monthly_price, code",
    )
    .fetch_all(state.pool())
    .await?;
    Ok(Json(plans.iter().map(|p| plan_json(&p.0)).collect()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishPlan {
    code: String,
    name: String,
    monthly_price: String,
    yearly_price: Option<String>,
    currency: Option<String>,
    limits: LimitsBody,
    #[serde(default)]
    features: Vec<String>,
    rate_limit_per_minute: u32,
}

/// Limits; absent or `null` means unlimited.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    users: Option<u64>,
    bookings_per_month: Option<u64>,
    events: Option<u64>,
    tickets_per_event: Option<u64>,
    storage_mb: Option<u64>,
    api_calls_per_month: Option<u64>,
}

/// `POST /v1/plans` (admin): publishes a new plan, or the next version of an existing one.
/// Existing subscribers keep the version they signed up on.
#[utoipa::path(
    post,
    path = "/v1/plans",
    tag = "plans",
    params(crate::openapi::IdempotencyHeader),
    request_body = PublishPlan,
    responses(
        (status = 201, description = "The published plan version", body = serde_json::Value),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn publish(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<PublishPlan>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let monthly_price = parse_price(&body.monthly_price, "monthly_price")?;
    let yearly_price = match body.yearly_price {
        Some(price) => parse_price(&price, "yearly_price")?,
        None => monthly_price * Decimal::TEN,
    };
    if !(1..=1_000_000).contains(&body.rate_limit_per_minute) {
        return Err(ApiError::validation("rate_limit_per_minute", "must be between 1 and 1000000"));
    }
    if body.features.len() > 100 || body.features.iter().any(|f| f.is_empty() || f.len() > 64) {
        return Err(ApiError::validation("features", "must be at most 100 names of 1 to 64 characters"));
    }
    let l = body.limits;
    let plan = Plan {
        code: PlanCode::parse(&body.code)?,
        name: DisplayName::parse(&body.name, "name")?.into_inner(),
        version: 0,
        monthly_price,
        yearly_price,
        currency: CurrencyCode::parse(body.currency.as_deref().unwrap_or("EUR"))?.into_inner(),
        limits: PlanLimits {
            users: l.users,
            bookings_per_month: l.bookings_per_month,
            events: l.events,
            tickets_per_event: l.tickets_per_event,
            storage_mb: l.storage_mb,
            api_calls_per_month: l.api_calls_per_month,
        },
        features: body.features,
        rate_limit_per_minute: body.rate_limit_per_minute,
    };
    let context = state.context(None, caller.actor());
    let app = state.clone();
    let published = state
        .detach(async move {
            let code = plan.code.to_string();
            let committed = app.accounts().plans().publish(plan, &context).await?;
            app.settle(&code, &committed).await;
            Ok(committed.state.latest.expect("just published"))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(plan_json(&published))))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, publish))]
pub struct Docs;
