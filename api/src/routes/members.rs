//! Members (seats) of the caller's tenant: invitations, acceptance, roles, removal.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::vault::PersonalDataKey;
use domain::member::MemberCommand;
use domain::tenant::ApiKeyRole;
use domain::values::{DisplayName, Email};
use projections::tenants::reads::MemberRow;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, parse_time_cursor, time_cursor, Page};
use crate::app::AppState;
use crate::auth::{Manager, TenantCaller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery, OptionalJson};

/// The member routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/members", post(invite).get(list))
        .route("/v1/members/{id}", get(read).patch(change_role).delete(remove))
        .route("/v1/members/{id}/accept", post(accept))
}

/// A member as the API shows it (e-mail and name are `null` once the tenant is erased).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    id: Uuid,
    tenant_id: Uuid,
    email: Option<String>,
    name: Option<String>,
    /// `owner`, `admin`, `member` or `readonly`.
    role: String,
    /// `invited`, `active` or `removed`.
    status: String,
    invited_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    removed_at: Option<DateTime<Utc>>,
}

/// The columns of [`MemberRow`].
impl MemberView {
    /// The view of a row, opened with the tenant's key.
    pub fn open(r: MemberRow, key: &PersonalDataKey) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            email: key.open(&r.email),
            name: r.name.and_then(|n| key.open(n.as_str())),
            role: r.role,
            status: r.status,
            invited_at: r.invited_at,
            accepted_at: r.accepted_at,
            removed_at: r.removed_at,
        }
    }
}

/// An invitation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Invite {
    /// E-mail, unique among the tenant's members that are not removed.
    #[schema(example = "dr.meier@example.com", format = "email", max_length = 254)]
    email: String,
    /// Display name (1 to 200 characters).
    #[schema(example = "Dr. Anna Meier", min_length = 1, max_length = 200)]
    name: Option<String>,
    /// `owner`, `admin`, `member` or `readonly` (an admin key cannot invite an owner).
    #[schema(example = "member", pattern = "^(owner|admin|member|readonly)$")]
    role: String,
}

fn role(input: &str, caller: &TenantCaller) -> Result<ApiKeyRole, ApiError> {
    let role = ApiKeyRole::parse(input)?;
    if role == ApiKeyRole::Owner && caller.role == Some(ApiKeyRole::Admin) {
        return Err(ApiError::forbidden("an admin key may not make owners; use an owner key"));
    }
    Ok(role)
}

async fn load(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<MemberView, ApiError> {
    let row = state.reads().tenants().member(tenant_id, id).await?;
    let row = row.ok_or_else(|| ApiError::not_found("member"))?;
    Ok(MemberView::open(row, &state.vault().key(tenant_id).await?))
}

/// `POST /v1/members` (owner or admin key; the admin with `X-Tenant-ID`) `{email, name?, role}`:
/// invites a member, who takes a seat at once. Seats (invited + active members) are limited
/// to the plan version's `users` plus the subscription's `extra_users`: one more is 429
/// `QUOTA_EXCEEDED` `{metric: "users", limit, used}`, exact under concurrency, unless the
/// subscription has `auto_add_seats`, which adds a seat (billed prorated on the next invoice).
/// An e-mail already among the tenant's members that are not removed: 409 `CONFLICT`
/// (`details.field = "email"`).
#[utoipa::path(
    post,
    path = "/v1/members",
    tag = "members",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = Invite,
    responses(
        (status = 201, description = "The member, invited", body = MemberView),
        crate::openapi::CommandErrors,
        (status = 429, description = "QUOTA_EXCEEDED (details: metric users, limit, used)", body = crate::openapi::ErrorBody)
    ),
)]
async fn invite(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<Invite>,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    let email = Email::parse(&body.email, "email")?;
    let name = body.name.as_deref().map(|n| DisplayName::parse(n, "name")).transpose()?;
    let role = role(&body.role, &caller)?;
    let tenant_id = caller.tenant_id;
    let subscription = state.reads().tenants().subscription_id(tenant_id).await?;
    let subscription = subscription.ok_or_else(|| ApiError::not_found("tenant"))?;
    let context = state.context(Some(tenant_id), caller.actor);
    let app = state.clone();
    let id = state
        .detach(async move {
            let (id, committed) = app.members().invite(tenant_id, subscription, email, name, role, &context).await?;
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
    /// `invited`, `active` or `removed`.
    #[param(pattern = "^(invited|active|removed)$")]
    status: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/members?status&limit&cursor`: the tenant's members, oldest invitation first.
#[utoipa::path(
    get,
    path = "/v1/members",
    tag = "members",
    params(ListQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of members: {data, has_more, next_cursor}", body = crate::routes::Page<MemberView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<MemberView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(status) = q.status.as_deref() {
        if !["invited", "active", "removed"].contains(&status) {
            return Err(ApiError::validation("status", "must be invited, active or removed"));
        }
    }
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let rows = state.reads().tenants().members(caller.tenant_id, q.status, cursor, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.invited_at, r.id));
    let key = state.vault().key(caller.tenant_id).await?;
    Ok(Json(Page {
        data: page.data.into_iter().map(|r| MemberView::open(r, &key)).collect(),
        has_more: page.has_more,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/members/{id}`: another tenant's member is 404.
#[utoipa::path(
    get,
    path = "/v1/members/{id}",
    tag = "members",
    params(("id" = Uuid, Path, description = "Member id"), crate::openapi::TenantHeader),
    responses((status = 200, description = "The member", body = MemberView), crate::openapi::AuthErrors, crate::openapi::NotFound),
)]
async fn read(State(state): State<AppState>, caller: TenantCaller, Path(id): Path<String>) -> Result<Json<MemberView>, ApiError> {
    let id = path_id(&id, "member")?;
    Ok(Json(load(&state, caller.tenant_id, id).await?))
}

async fn execute(
    state: AppState,
    caller: TenantCaller,
    id: String,
    command: impl FnOnce(DateTime<Utc>) -> MemberCommand,
) -> Result<Json<MemberView>, ApiError> {
    let id = path_id(&id, "member")?;
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let command = command(context.at);
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.members().execute(tenant_id, id, command, &context).await?;
            app.settle(&id.to_string(), &committed).await;
            Ok(())
        })
        .await?;
    Ok(Json(load(&state, tenant_id, id).await?))
}

/// `POST /v1/members/{id}/accept`: the invitation is accepted; the member is `active`. An
/// active or removed member: 409 `INVALID_STATE_TRANSITION`.
#[utoipa::path(
    post,
    path = "/v1/members/{id}/accept",
    tag = "members",
    params(("id" = Uuid, Path, description = "Member id"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    responses((status = 200, description = "The member, active", body = MemberView), crate::openapi::CommandErrors),
)]
async fn accept(
    State(state): State<AppState>,
    caller: TenantCaller,
    Path(id): Path<String>,
    OptionalJson(_empty): OptionalJson<super::subscription::Empty>,
) -> Result<Json<MemberView>, ApiError> {
    execute(state, caller, id, |at| MemberCommand::Accept { at }).await
}

/// A new role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeRole {
    /// `owner`, `admin`, `member` or `readonly`.
    #[schema(example = "admin")]
    role: String,
}

/// `PATCH /v1/members/{id}` (owner or admin key) `{role}`: changes the role of a member who is
/// not removed.
#[utoipa::path(
    patch,
    path = "/v1/members/{id}",
    tag = "members",
    params(("id" = Uuid, Path, description = "Member id"), crate::openapi::TenantHeader),
    request_body = ChangeRole,
    responses((status = 200, description = "The member with the new role", body = MemberView), crate::openapi::CommandErrors),
)]
async fn change_role(
    State(state): State<AppState>,
    Manager(caller): Manager,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChangeRole>,
) -> Result<Json<MemberView>, ApiError> {
    let role = role(&body.role, &caller)?;
    execute(state, caller, id, move |at| MemberCommand::ChangeRole { role, at }).await
}

/// `DELETE /v1/members/{id}` (owner or admin key): the member is `removed` and its seat is free
/// at once (the current period is not credited). Answers the member.
#[utoipa::path(
    delete,
    path = "/v1/members/{id}",
    tag = "members",
    params(("id" = Uuid, Path, description = "Member id"), crate::openapi::TenantHeader),
    responses((status = 200, description = "The member, removed", body = MemberView), crate::openapi::CommandErrors),
)]
async fn remove(State(state): State<AppState>, Manager(caller): Manager, Path(id): Path<String>) -> Result<Json<MemberView>, ApiError> {
    execute(state, caller, id, |at| MemberCommand::Remove { at }).await
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(invite, list, read, accept, change_role, remove), components(schemas(MemberView, Invite, ChangeRole)))]
pub struct Docs;
