//! Resources: rooms and events a tenant books.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use domain::resource::{parse_capacity, ResourceKind};
use domain::values::{DisplayName, TimeZoneName};
use serde::Deserialize;
use uuid::Uuid;

use super::{page_limit, Page};
use crate::app::AppState;
use crate::auth::{Manager, TenantCaller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery};

/// The resource routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/resources", get(list).post(create)).route("/v1/resources/{id}", get(read))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateResource {
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
        example = "Room 1"
    )]
    name: String,
    /// `room` or `event` (an event counts against the plan's `events`).
    #[schema(pattern = "^(room|event)$", example = "room")]
    kind: String,
    /// People a booking may hold (a room), or seats (an event): 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1_000_000)]
    capacity: i64,
    /// IANA time zone (default: the tenant's).
    #[schema(example = "Europe/Zurich", pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$")]
    timezone: Option<String>,
}

/// A room or an event.
pub use projections::bookings::reads::ResourceRow as ResourceView;

async fn load(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<ResourceView, ApiError> {
    let row = state.reads().bookings().resource(tenant_id, id).await?;
    row.ok_or_else(|| ApiError::not_found("resource"))
}

/// `POST /v1/resources {name, kind, capacity, timezone}` → 201. Event resources count against
/// the plan's `events` limit (429 `QUOTA_EXCEEDED` beyond it). `timezone` defaults to the
/// tenant's.
#[utoipa::path(
    post,
    path = "/v1/resources",
    tag = "bookings",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = CreateResource,
    responses(
        (status = 201, description = "The resource", body = ResourceView),
        crate::openapi::CommandErrors,
        (status = 429, description = "QUOTA_EXCEEDED: the plan allows no more event resources; RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After)", body = crate::openapi::ErrorBody)
    ),
)]
async fn create(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<CreateResource>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    let name = DisplayName::parse(&body.name, "name")?;
    let kind = ResourceKind::parse(&body.kind)?;
    let capacity = parse_capacity(body.capacity)?;
    let timezone = match body.timezone {
        Some(tz) => TimeZoneName::parse(&tz, "timezone")?,
        None => {
            let tz = state.reads().tenants().timezone(caller.tenant_id).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
            TimeZoneName::parse(&tz, "timezone")?
        }
    };
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let app = state.clone();
    let id = state
        .detach(async move {
            let (id, committed) = app.bookings().create_resource(tenant_id, name, kind, capacity, timezone, &context).await?;
            app.settle(&id.to_string(), &committed).await;
            Ok(id)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(load(&state, tenant_id, id).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(pattern = "^(room|event)$")]
    kind: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

/// `GET /v1/resources?kind&limit&cursor`.
#[utoipa::path(
    get,
    path = "/v1/resources",
    tag = "bookings",
    params(ListQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of resources", body = Page<ResourceView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<ResourceView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    let kind = q.kind.as_deref().map(ResourceKind::parse).transpose()?;
    let rows = state.reads().bookings().resources(caller.tenant_id, kind.map(|k| k.as_str()), q.cursor, limit + 1).await?;
    Ok(Json(Page::from_rows(rows, limit, |r| r.id.to_string())))
}

/// `GET /v1/resources/{id}`.
#[utoipa::path(
    get,
    path = "/v1/resources/{id}",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "Resource id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The resource", body = ResourceView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: TenantCaller, Path(id): Path<String>) -> Result<Json<ResourceView>, ApiError> {
    Ok(Json(load(&state, caller.tenant_id, path_id(&id, "resource")?).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, read))]
pub struct Docs;
