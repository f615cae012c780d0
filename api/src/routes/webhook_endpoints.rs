//! Outbound webhook endpoints (contract: *Outbound webhooks*): register, list, change, delete,
//! and each endpoint's delivery log with a manual retry. The platform admin (no `X-Tenant-ID`)
//! manages the platform's endpoints, which get every tenant's events; a tenant's owner or admin
//! key (or the admin naming the tenant in `X-Tenant-ID`) manages the tenant's own. Delivery is
//! `projections::webhooks`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use domain::tenant::ApiKeyRole;
use projections::webhooks::endpoints::{EndpointChange, NewEndpoint, StoredDelivery};
use projections::webhooks::{self, EVENT_TYPES};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery};
use crate::routes::{page_limit, parse_time_cursor, time_cursor, Page, PageQuery};

/// The webhook endpoint routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhook-endpoints", post(create).get(list))
        .route("/v1/webhook-endpoints/{id}", get(show).patch(change).delete(remove))
        .route("/v1/webhook-endpoints/{id}/deliveries", get(deliveries))
        .route("/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry", post(retry))
}

/// Whose endpoints the caller manages: `None` for the platform's (the admin naming no
/// tenant), else the tenant's. Tenant keys must be owner or admin keys.
fn scope(caller: &Caller) -> Result<Option<Uuid>, ApiError> {
    match caller {
        Caller::Admin { acting_for } => Ok(*acting_for),
        Caller::Tenant(key) => match key.role {
            ApiKeyRole::Owner | ApiKeyRole::Admin => Ok(Some(key.tenant_id)),
            role => {
                Err(ApiError::forbidden(format!("a {} key may not manage webhook endpoints; use an owner or admin key", role.as_str())))
            }
        },
    }
}

/// `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://...`, or `http://` to a host:port in `SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS`; it must
    /// not resolve to a loopback, private or link-local address unless listed there.
    #[schema(max_length = 2048, format = "uri", example = "https://example.com/hooks/ledger")]
    url: String,
    /// Event types to receive, or `["*"]` for all.
    #[schema(min_items = 1, max_items = 32)]
    event_types: Vec<EventType>,
    /// A note for people.
    #[schema(max_length = 500)]
    description: Option<String>,
}

/// One public event type, or `*` for every one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(
    value_type = String,
    example = "invoice.issued",
    pattern = r"^(\*|tenant\.(created|suspended|reactivated|cancelled)|subscription\.(updated|past_due|suspended|cancelled|trial_will_end)|invoice\.(issued|paid|voided|payment_reminder)|booking\.(confirmed|cancelled)|member\.(invited|removed)|quota\.threshold_reached)$"
)]
#[serde(transparent)]
pub struct EventType(String);

/// `PATCH /v1/webhook-endpoints/{id}`: any of the fields.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEndpoint {
    /// A new URL (checked as on creation).
    #[schema(max_length = 2048, format = "uri")]
    url: Option<String>,
    /// New event types.
    #[schema(min_items = 1, max_items = 32)]
    event_types: Option<Vec<EventType>>,
    /// A new note.
    #[schema(max_length = 500)]
    description: Option<String>,
    /// `enabled` or `disabled` (enabling starts a new failure streak).
    status: Option<EndpointStatus>,
}

/// An endpoint's status.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    /// Receives deliveries.
    Enabled,
    /// Receives nothing (disabled by hand, or after 3 days of failures).
    Disabled,
}

/// A registered endpoint (its secret only in the answer that created it).
pub use projections::webhooks::endpoints::EndpointRow as Endpoint;

/// One event's delivery to an endpoint.
pub use projections::webhooks::endpoints::DeliveryRow as Delivery;

fn event_types(types: Vec<EventType>) -> Result<Vec<String>, ApiError> {
    if types.is_empty() || types.len() > 32 {
        return Err(ApiError::validation("event_types", "must list 1 to 32 event types, or [\"*\"]"));
    }
    let mut out: Vec<String> = Vec::new();
    for EventType(t) in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(ApiError::validation(
                "event_types",
                format!(
                    "unknown event type \"{t}\": the types are {}",
                    EVENT_TYPES.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn description(text: Option<String>) -> Result<Option<String>, ApiError> {
    match text {
        Some(t) if t.chars().count() > 500 => Err(ApiError::validation("description", "must be at most 500 characters")),
        other => Ok(other),
    }
}

async fn checked_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    webhooks::check_target(url, state.webhook_allow()).await.map(|_| ()).map_err(|e| ApiError::validation("url", format!("the url {e}")))
}

/// The endpoint `id` if the caller's scope holds it (the admin naming no tenant sees every
/// endpoint).
async fn endpoint_in_scope(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Endpoint, ApiError> {
    let scope = scope(caller)?;
    let id = path_id(raw_id, "webhook endpoint")?;
    let endpoint = state.endpoints().find(id).await?;
    match endpoint {
        Some(e) if scope.is_none() && caller.is_admin() || e.tenant_id == scope && scope.is_some() => Ok(e),
        _ => Err(ApiError::not_found("webhook endpoint")),
    }
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "The endpoint, with its signing secret (shown this once)", body = Endpoint),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEndpoint>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    let tenant_id = scope(&caller)?;
    let types = event_types(body.event_types)?;
    let description = description(body.description)?;
    checked_url(&state, &body.url).await?;
    let (id, secret, now) = (Uuid::now_v7(), webhooks::new_secret(), state.now());
    let sealed = state.sealer().seal(id, &secret);
    let new = NewEndpoint { id, tenant_id, url: body.url, event_types: types, description, secret_sealed: sealed, created_at: now };
    let mut endpoint = state.endpoints().create(new).await?;
    endpoint.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(endpoint)))
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    params(PageQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of the caller's endpoints (the platform's for the admin naming no tenant), oldest first: {data, has_more, next_cursor}", body = Page<Endpoint>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden
    ),
)]
async fn list(State(state): State<AppState>, caller: Caller, ApiQuery(q): ApiQuery<PageQuery>) -> Result<Json<Page<Endpoint>>, ApiError> {
    let tenant_id = scope(&caller)?;
    let limit = page_limit(q.limit)?;
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let rows = state.endpoints().list(tenant_id, cursor, limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |e| time_cursor(e.created_at, e.id))))
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The endpoint (no secret)", body = Endpoint),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn show(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Endpoint>, ApiError> {
    Ok(Json(endpoint_in_scope(&state, &caller, &id).await?))
}

#[utoipa::path(
    patch,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), crate::openapi::TenantHeader),
    request_body = ChangeEndpoint,
    responses(
        (status = 200, description = "The changed endpoint", body = Endpoint),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChangeEndpoint>,
) -> Result<Json<Endpoint>, ApiError> {
    let endpoint = endpoint_in_scope(&state, &caller, &id).await?;
    let types = body.event_types.map(event_types).transpose()?;
    let description = description(body.description)?;
    if let Some(url) = &body.url {
        checked_url(&state, url).await?;
    }
    let status = body.status.map(|s| match s {
        EndpointStatus::Enabled => "enabled",
        EndpointStatus::Disabled => "disabled",
    });
    let change = EndpointChange { url: body.url, event_types: types, description, status };
    let changed = state.endpoints().change(endpoint.id, change, state.now()).await?;
    Ok(Json(changed))
}

/// What `DELETE` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// The endpoint's id.
    id: Uuid,
    /// Always `true`.
    deleted: bool,
}

#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Deleted, with its deliveries; nothing more is sent to it", body = Deleted),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn remove(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Deleted>, ApiError> {
    let endpoint = endpoint_in_scope(&state, &caller, &id).await?;
    state.endpoints().delete(endpoint.id).await?;
    Ok(Json(Deleted { id: endpoint.id, deleted: true }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// `pending`, `succeeded` or `failed`.
    status: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/deliveries",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), DeliveriesQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The endpoint's deliveries, newest first: {data, has_more, next_cursor}", body = Page<Delivery>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Page<Delivery>>, ApiError> {
    let endpoint = endpoint_in_scope(&state, &caller, &id).await?;
    let limit = page_limit(q.limit)?;
    if q.status.as_deref().is_some_and(|s| !["pending", "succeeded", "failed"].contains(&s)) {
        return Err(ApiError::validation("status", "must be pending, succeeded or failed"));
    }
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let rows = state.endpoints().deliveries(endpoint.id, q.status.as_deref(), cursor, limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |d| time_cursor(d.created_at, d.id))))
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
    tag = "webhooks",
    params(("id" = Uuid, Path, description = "Endpoint id"), ("delivery_id" = Uuid, Path, description = "Delivery id"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "Sent again now (whatever its status was); the delivery after this attempt", body = Delivery),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound
    ),
)]
async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Json<Delivery>, ApiError> {
    let endpoint = endpoint_in_scope(&state, &caller, &id).await?;
    let delivery_id = path_id(&delivery_id, "delivery")?;
    let stored = state.endpoints().stored_delivery(endpoint.id, delivery_id).await?;
    let StoredDelivery { event_id, body, secret_sealed: sealed } = stored.ok_or_else(|| ApiError::not_found("delivery"))?;
    let secret = state
        .sealer()
        .open(endpoint.id, &sealed)
        .ok_or_else(|| ApiError::internal("the endpoint's secret cannot be opened with this server's sealing key"))?;
    // The attempt and its record outlive the request (a client that hangs up does not leave it half done).
    let (app, url) = (state.clone(), endpoint.url.clone());
    let now = state.now();
    // A failed delivery (8 attempts) that fails again stays failed; one that had succeeded and
    // fails now is retried on the schedule.
    tokio::spawn(async move {
        let attempt = webhooks::send(&url, &secret, &event_id, &body, app.webhook_allow()).await;
        app.endpoints().record(delivery_id, endpoint.id, &attempt, now).await
    })
    .await
    .map_err(ApiError::internal)??;
    let delivery = state.endpoints().delivery(delivery_id).await?.ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok(Json(delivery))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, show, change, remove, deliveries, retry),
    components(schemas(CreateEndpoint, ChangeEndpoint, EventType, EndpointStatus, Endpoint, Delivery, Deleted))
)]
pub struct Docs;
