//! Tenant API keys: issue (the secret is shown once), list (never the secret), revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::tenant::{ApiKeyRole, TenantCommand};
use domain::values::DisplayName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{Manager, TenantCaller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson};
use crate::routes::Page;

/// The key routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/api-keys", post(issue).get(list)).route("/v1/api-keys/{id}", delete(revoke))
}

/// `POST /v1/api-keys`: `role` is required, `name` defaults to the role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueKey {
    /// `owner`, `admin`, `member` or `readonly` (only an owner key issues owner keys).
    #[schema(pattern = "^(owner|admin|member|readonly)$", example = "member")]
    role: String,
    /// 1 to 200 characters, not blank (default: the role).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
        example = "ci deploys"
    )]
    name: Option<String>,
}

/// A key as listed (no secret, ever).
pub use projections::tenants::reads::ApiKeyRow as KeyView;

/// A key just issued: as listed, plus its secret (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    /// Its id.
    id: Uuid,
    /// A name for people.
    name: String,
    /// `owner`, `admin`, `member` or `readonly`.
    #[schema(pattern = "^(owner|admin|member|readonly)$")]
    role: String,
    /// The key's first characters, to tell keys apart.
    key_prefix: String,
    /// Issued.
    created_at: DateTime<Utc>,
    /// Revoked, if it was.
    revoked_at: Option<DateTime<Utc>>,
    /// The secret (`slk_` + 64 hex): store it now.
    api_key: String,
}

/// Key `id` as the read model has it.
async fn load(state: &AppState, id: Uuid) -> Result<KeyView, ApiError> {
    state.reads().tenants().api_key(id).await?.ok_or_else(|| ApiError::not_found("API key"))
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    tag = "api-keys",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = IssueKey,
    responses(
        (status = 201, description = "The key with its secret, shown this once", body = IssuedKey),
        crate::openapi::CommandErrors
    ),
)]
async fn issue(
    State(state): State<AppState>,
    Manager(caller): Manager,
    ApiJson(body): ApiJson<IssueKey>,
) -> Result<(StatusCode, Json<IssuedKey>), ApiError> {
    let role = ApiKeyRole::parse(&body.role)?;
    let name = DisplayName::parse(body.name.as_deref().unwrap_or(role.as_str()), "name")?;
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let app = state.clone();
    let key = state
        .detach(async move {
            let (key, committed) = app.tenants().issue_key(tenant_id, name, role, caller.role, &context).await?;
            app.settle(&tenant_id.to_string(), &committed).await;
            Ok(key)
        })
        .await?;
    let view = load(&state, key.key_id).await?;
    let issued = IssuedKey {
        id: view.id,
        name: view.name,
        role: view.role,
        key_prefix: view.key_prefix,
        created_at: view.created_at,
        revoked_at: view.revoked_at,
        api_key: key.secret,
    };
    Ok((StatusCode::CREATED, Json(issued)))
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    tag = "api-keys",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The tenant's keys (no secrets), all in one page", body = crate::routes::Page<KeyView>),
        crate::openapi::AuthErrors
    ),
)]
async fn list(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<Page<KeyView>>, ApiError> {
    let keys = state.reads().tenants().api_keys(caller.tenant_id).await?;
    Ok(Json(Page { data: keys, has_more: false, next_cursor: None }))
}

#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = Uuid, Path, description = "Key id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The revoked key; it stops working at once", body = KeyView),
        crate::openapi::CommandErrors,
        crate::openapi::NotFound
    ),
)]
async fn revoke(State(state): State<AppState>, Manager(caller): Manager, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    let key_id = path_id(&id, "API key")?;
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.tenants().execute(tenant_id, TenantCommand::RevokeApiKey { key_id, at: context.at }, &context).await?;
            app.settle(&tenant_id.to_string(), &committed).await;
            Ok(())
        })
        .await?;
    Ok(Json(load(&state, key_id).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(issue, list, revoke))]
pub struct Docs;
