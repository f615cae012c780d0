//! `GET /v1/tenant/export`: everything the tenant owns, as one JSON document (GDPR access and
//! portability). Personal data is opened with the tenant's key; after an erasure it is `null`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::error::ApiError;

/// The export route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenant/export", get(export))
}

/// Every row of `rm.<table>` for `tenant_id` as JSON, in `order`, without `columns_hidden`.
async fn rows(state: &AppState, table: &str, tenant_id: Uuid, order: &str, hidden: &[&str]) -> Result<Vec<Value>, ApiError> {
    let hide: String = hidden.iter().map(|c| format!(" - '{c}'")).collect();
    let rows: Vec<Value> = sqlx::query_scalar(&format!("SELECT to_jsonb(x){hide} FROM rm.{table} x WHERE tenant_id = $1 ORDER BY {order}"))
        .bind(tenant_id)
        .fetch_all(state.pool())
        .await?;
    Ok(rows)
}

/// `GET /v1/tenant/export` (owner or admin key, or the admin naming the tenant): `{exported_at,
/// tenant, subscription, api_keys, resources, bookings, members, usage, invoices, credit_notes, audit}`. Key hashes
/// are left out; everything else the read models hold for the tenant is in.
#[utoipa::path(
    get,
    path = "/v1/tenant/export",
    tag = "gdpr",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Everything the tenant owns: {exported_at, tenant, subscription, api_keys, resources, bookings, members, usage, invoices, credit_notes, audit}", body = serde_json::Value),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden
    ),
)]
async fn export(State(state): State<AppState>, caller: TenantCaller) -> Result<impl IntoResponse, ApiError> {
    caller.require_manager()?;
    let tenant_id = caller.tenant_id;
    let tenant = super::tenants::load(&state, tenant_id).await?;
    let key = state.vault().key(tenant_id).await?;
    let subscription = rows(&state, "subscriptions", tenant_id, "id", &[]).await?.into_iter().next();
    let mut bookings = rows(&state, "bookings", tenant_id, "starts_at, id", &["customer_name", "customer_email"]).await?;
    let customers: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT id, customer_name, customer_email FROM rm.bookings WHERE tenant_id = $1 ORDER BY starts_at, id")
            .bind(tenant_id)
            .fetch_all(state.pool())
            .await?;
    for (booking, (_, name, email)) in bookings.iter_mut().zip(customers) {
        booking["customer"] = json!({"name": key.open(&name), "email": key.open(&email)});
    }
    let members: Vec<super::members::MemberRow> =
        sqlx::query_as(&format!("SELECT {} FROM rm.members WHERE tenant_id = $1 ORDER BY invited_at, id", super::members::MEMBER_COLUMNS))
            .bind(tenant_id)
            .fetch_all(state.pool())
            .await?;
    let members: Vec<super::members::MemberView> = members.into_iter().map(|m| super::members::MemberView::open(m, &key)).collect();
    let document = json!({
        "exported_at": state.now(),
        "tenant": tenant,
        "subscription": subscription,
        "api_keys": rows(&state, "api_keys", tenant_id, "created_at, id", &["key_hash"]).await?,
        "resources": rows(&state, "resources", tenant_id, "created_at, id", &[]).await?,
        "bookings": bookings,
        "members": members,
        "credit_notes": rows(&state, "credit_notes", tenant_id, "created_at, id", &[]).await?,
        "usage": rows(&state, "usage_records", tenant_id, "occurred_at, idempotency_key", &[]).await?,
        "invoices": rows(&state, "invoices", tenant_id, "issued_at, id", &[]).await?,
        "audit": rows(&state, "audit_entries", tenant_id, "position", &[]).await?,
    });
    let filename = format!("attachment; filename=\"{}-export.json\"", tenant.code);
    Ok(([(header::CONTENT_DISPOSITION, filename)], Json(document)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(export))]
pub struct Docs;
