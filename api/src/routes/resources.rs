//! Resources: rooms and events a tenant books.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::resource::{parse_capacity, ResourceKind};
use domain::values::{DisplayName, TimeZoneName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, Page};
use crate::app::AppState;
use crate::auth::TenantCaller;
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
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ResourceView {
    /// Its id.
    id: Uuid,
    /// Whose.
    tenant_id: Uuid,
    /// Its name.
    name: String,
    /// `room` or `event`.
    #[schema(pattern = "^(room|event)$")]
    kind: String,
    /// People a booking may hold (a room), or seats (an event).
    #[schema(minimum = 1)]
    capacity: i32,
    /// IANA time zone.
    #[schema(example = "Europe/Zurich")]
    timezone: String,
    /// Created.
    created_at: DateTime<Utc>,
}

/// A page of resources (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ResourcePage {
    data: Vec<ResourceView>,
    has_more: bool,
    next_cursor: Option<String>,
}

async fn load(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<ResourceView, ApiError> {
    let row: Option<ResourceView> = sqlx::query_as(
        "SELECT id, tenant_id, name, kind, capacity, timezone, created_at FROM rm.resources WHERE id = $1 AND tenant_id = $2",
    )
    .bind(id)
    .bind(tenant_id)
    .fetch_optional(state.pool())
    .await?;
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
    caller: TenantCaller,
    ApiJson(body): ApiJson<CreateResource>,
) -> Result<(StatusCode, Json<ResourceView>), ApiError> {
    caller.require_manager()?;
    let name = DisplayName::parse(&body.name, "name")?;
    let kind = ResourceKind::parse(&body.kind)?;
    let capacity = parse_capacity(body.capacity)?;
    let timezone = match body.timezone {
        Some(tz) => TimeZoneName::parse(&tz, "timezone")?,
        None => {
            let tz: String =
                sqlx::query_scalar("SELECT timezone FROM rm.tenants WHERE id = $1").bind(caller.tenant_id).fetch_one(state.pool()).await?;
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
        (status = 200, description = "A page of resources", body = ResourcePage),
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
    let rows: Vec<ResourceView> = sqlx::query_as(
        "SELECT id, tenant_id, name, kind, capacity, timezone, created_at FROM rm.resources
         WHERE tenant_id = $1 AND ($2::text IS NULL OR kind = $2) AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
    )
    .bind(caller.tenant_id)
    .bind(kind.map(|k| k.as_str()))
    .bind(q.cursor)
    .bind(limit + 1)
    .fetch_all(state.pool())
    .await?;
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
