//! Usage corrections: reading a fact by its idempotency key, voiding and amending it (within 35
//! days of its `occurred_at`), each correction an event of its own with actor and reason. A
//! correction to a period already invoiced is billed on the next invoice as the difference, as
//! late usage is (see `domain::subscription::rules::usage_billing`).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::usage::corrections::{CorrectionKind, UsageCorrections};
use domain::usage::RecordedFact;
use serde::{Deserialize, Serialize};

use crate::amounts::Quantity;
use crate::app::AppState;
use crate::auth::{Manager, TenantCaller};
use crate::error::ApiError;
use crate::extract::ApiJson;

/// The correction routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/usage/{idempotency_key}", get(read))
        .route("/v1/usage/{idempotency_key}/void", post(void))
        .route("/v1/usage/{idempotency_key}/amend", post(amend))
}

/// One correction of a fact.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageCorrection)]
struct CorrectionView {
    /// `void` or `amend`.
    #[schema(value_type = String, pattern = "^(void|amend)$")]
    kind: CorrectionKind,
    /// The quantity after it (0 for a void).
    quantity: Quantity,
    /// The quantity before it.
    previous_quantity: Quantity,
    /// The value after an amendment (a `unique_count` fact).
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// The value before it (a `unique_count` fact).
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_value: Option<String>,
    /// Why.
    reason: String,
    /// Who (`admin`, `key:<prefix>`).
    actor: String,
    /// When.
    at: DateTime<Utc>,
}

/// A usage fact with its corrections.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = UsageFactView)]
struct FactView {
    /// Its key.
    idempotency_key: String,
    /// Its metric.
    metric: String,
    /// What counts now (0 once void).
    quantity: Quantity,
    /// The value it counts (a `unique_count` fact; none once void).
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// When it happened.
    occurred_at: DateTime<Utc>,
    /// `recorded`, `amended` or `void`.
    #[schema(pattern = "^(recorded|amended|void)$")]
    status: &'static str,
    /// Its corrections, oldest first.
    corrections: Vec<CorrectionView>,
}

fn view(key: &str, fact: &RecordedFact, corrections: &UsageCorrections) -> FactView {
    let (quantity, value) = if corrections.corrections.is_empty() {
        (fact.quantity, fact.value.clone())
    } else {
        (corrections.quantity, corrections.value.clone())
    };
    FactView {
        idempotency_key: key.to_owned(),
        metric: fact.metric.as_str().to_owned(),
        quantity: quantity.into(),
        value,
        occurred_at: fact.occurred_at,
        status: corrections.status(),
        corrections: corrections
            .corrections
            .iter()
            .map(|c| CorrectionView {
                kind: c.kind,
                quantity: c.quantity.into(),
                previous_quantity: c.previous_quantity.into(),
                value: c.value.clone(),
                previous_value: c.previous_value.clone(),
                reason: c.reason.clone(),
                actor: c.actor.clone(),
                at: c.at,
            })
            .collect(),
    }
}

/// `GET /v1/usage/{idempotency_key}`: the fact recorded under the key (on its own or in a batch),
/// what counts of it now, and its corrections.
#[utoipa::path(
    get,
    path = "/v1/usage/{idempotency_key}",
    tag = "usage",
    params(("idempotency_key" = String, Path, description = "The fact's idempotency key (percent-encoded)"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The fact", body = FactView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
    ),
)]
async fn read(State(state): State<AppState>, caller: TenantCaller, Path(key): Path<String>) -> Result<Json<FactView>, ApiError> {
    let (fact, corrections) = state.usage().fact(caller.tenant_id, &key).await?.ok_or_else(|| ApiError::not_found("usage fact"))?;
    Ok(Json(view(&key, &fact, &corrections)))
}

/// A void.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VoidBody {
    /// Why (1 to 500 characters; audited).
    #[schema(example = "Sent twice by a retrying client", min_length = 1, max_length = 500)]
    reason: String,
}

/// An amendment: the new `quantity`, or the new `value` of a `unique_count` metric's fact.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AmendBody {
    /// The fact's new quantity: a JSON number or a decimal string, 0 to 10^15, at most 6
    /// decimal places.
    #[schema(value_type = Option<crate::amounts::QuantityInput>)]
    quantity: Option<serde_json::Value>,
    /// A `unique_count` fact's new value (1 to 255 characters).
    #[schema(example = "user-42")]
    value: Option<String>,
    /// Why (1 to 500 characters; audited).
    #[schema(example = "Metered twice", min_length = 1, max_length = 500)]
    reason: String,
}

async fn correct(
    state: AppState,
    caller: TenantCaller,
    key: String,
    quantity: Option<rust_decimal::Decimal>,
    value: Option<String>,
    reason: String,
) -> Result<Json<FactView>, ApiError> {
    let context = state.context(Some(caller.tenant_id), caller.actor);
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.usage().correct(caller.tenant_id, &key, quantity, value, reason, &context).await?;
            let (fact, _) = app.usage().fact(caller.tenant_id, &key).await?.ok_or_else(|| ApiError::not_found("usage fact"))?;
            Ok(Json(view(&key, &fact, &committed.state)))
        })
        .await
}

/// `POST /v1/usage/{idempotency_key}/void {reason}` (tenant owner/admin key, or the admin with
/// `X-Tenant-ID`): the fact no longer counts, at once in quotas; a period already invoiced is
/// billed the difference on the next invoice (negative, never a negative invoice: the excess and
/// its tax become credit balance). Allowed while `occurred_at` is at most 35 days old (older: 409
/// `CONFLICT`, `details.field = "occurred_at"`); a void fact: 409 `CONFLICT`, so of concurrent
/// voids exactly one succeeds.
#[utoipa::path(
    post,
    path = "/v1/usage/{idempotency_key}/void",
    tag = "usage",
    params(("idempotency_key" = String, Path, description = "The fact's idempotency key (percent-encoded)"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = VoidBody,
    responses(
        (status = 200, description = "The fact, void", body = FactView),
        crate::openapi::CommandErrors,
        (status = 404, description = "NOT_FOUND: no fact has this key", body = crate::openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the fact is void, or occurred more than 35 days ago (details.field = occurred_at); CONCURRENT_MODIFICATION", body = crate::openapi::ErrorBody)
    ),
)]
async fn void(
    State(state): State<AppState>,
    Manager(caller): Manager,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<VoidBody>,
) -> Result<Json<FactView>, ApiError> {
    correct(state, caller, key, None, None, body.reason).await
}

/// `POST /v1/usage/{idempotency_key}/amend {quantity | value, reason}` (tenant owner/admin key,
/// or the admin with `X-Tenant-ID`): the fact counts with `quantity` (a `unique_count` fact with
/// `value`) from now on; billed as a void is.
#[utoipa::path(
    post,
    path = "/v1/usage/{idempotency_key}/amend",
    tag = "usage",
    params(("idempotency_key" = String, Path, description = "The fact's idempotency key (percent-encoded)"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = AmendBody,
    responses(
        (status = 200, description = "The fact, amended", body = FactView),
        crate::openapi::CommandErrors,
        (status = 404, description = "NOT_FOUND: no fact has this key", body = crate::openapi::ErrorBody),
        (status = 409, description = "CONFLICT: the fact is void, or occurred more than 35 days ago (details.field = occurred_at); CONCURRENT_MODIFICATION", body = crate::openapi::ErrorBody)
    ),
)]
async fn amend(
    State(state): State<AppState>,
    Manager(caller): Manager,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<AmendBody>,
) -> Result<Json<FactView>, ApiError> {
    let (quantity, value) = match (body.quantity, body.value) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation("value", "give the new quantity or, for a unique_count metric, the new value, not both"))
        }
        (None, None) => {
            return Err(ApiError::validation("quantity", "give the fact's new quantity (or, for a unique_count metric, its new value)"))
        }
        (Some(q), None) => (crate::routes::usage::decimal_quantity(&q)?, None),
        // The quantity of a distinct value is 1.
        (None, Some(v)) => (rust_decimal::Decimal::ONE, Some(v)),
    };
    correct(state, caller, key, Some(quantity), value, body.reason).await
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(read, void, amend), components(schemas(VoidBody, AmendBody)))]
pub struct Docs;
