//! `GET /v1/tenant/export`: everything the tenant owns, as one JSON document (GDPR access and
//! portability). Personal data is opened with the tenant's key; after an erasure it is `null`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use projections::reads::ExportTable;
use serde::Serialize;
use serde_json::{json, Value};

use super::members::MemberView;
use super::tenants::TenantView;
use crate::app::AppState;
use crate::auth::Manager;
use crate::error::ApiError;

/// The export route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenant/export", get(export))
}

/// Everything a tenant owns, as one document (GDPR access and portability). The read models'
/// rows are exported whole, as objects with their columns, so an export keeps up with the read
/// models without a change here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantExport {
    /// When the export was made.
    exported_at: DateTime<Utc>,
    /// The tenant.
    tenant: TenantView,
    /// Its subscription's row (with the aggregate's `state`), if it has one.
    #[schema(value_type = Option<Object>)]
    subscription: Option<Value>,
    /// Its API keys (without their hashes).
    #[schema(value_type = Vec<Object>)]
    api_keys: Vec<Value>,
    /// Its rooms and events.
    #[schema(value_type = Vec<Object>)]
    resources: Vec<Value>,
    /// Its bookings, each with its `customer: {name, email}` opened (`null` once erased).
    #[schema(value_type = Vec<Object>)]
    bookings: Vec<Value>,
    /// Its members.
    members: Vec<MemberView>,
    /// Credit notes against its invoices.
    #[schema(value_type = Vec<Object>)]
    credit_notes: Vec<Value>,
    /// Its usage facts.
    #[schema(value_type = Vec<Object>)]
    usage: Vec<Value>,
    /// Its invoices.
    #[schema(value_type = Vec<Object>)]
    invoices: Vec<Value>,
    /// Its audit trail.
    #[schema(value_type = Vec<Object>)]
    audit: Vec<Value>,
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
        (status = 200, description = "Everything the tenant owns: {exported_at, tenant, subscription, api_keys, resources, bookings, members, usage, invoices, credit_notes, audit}", body = TenantExport),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden
    ),
)]
async fn export(State(state): State<AppState>, Manager(caller): Manager) -> Result<impl IntoResponse, ApiError> {
    let tenant_id = caller.tenant_id;
    let tenant = super::tenants::load(&state, tenant_id).await?;
    let key = state.vault().key(tenant_id).await?;
    let reads = state.reads();
    let rows = |table| reads.tenant_rows(table, tenant_id);
    let mut bookings = rows(ExportTable::Bookings).await?;
    let customers = reads.bookings().customers(tenant_id).await?;
    for (booking, (_, name, email)) in bookings.iter_mut().zip(customers) {
        booking["customer"] = json!({"name": key.open(&name), "email": key.open(&email)});
    }
    let members = reads.tenants().all_members(tenant_id).await?.into_iter().map(|m| MemberView::open(m, &key)).collect();
    let filename = format!("attachment; filename=\"{}-export.json\"", tenant.code);
    let document = TenantExport {
        exported_at: state.now(),
        tenant,
        subscription: rows(ExportTable::Subscriptions).await?.into_iter().next(),
        api_keys: rows(ExportTable::ApiKeys).await?,
        resources: rows(ExportTable::Resources).await?,
        bookings,
        members,
        credit_notes: rows(ExportTable::CreditNotes).await?,
        usage: rows(ExportTable::UsageRecords).await?,
        invoices: rows(ExportTable::Invoices).await?,
        audit: rows(ExportTable::AuditEntries).await?,
    };
    Ok(([(header::CONTENT_DISPOSITION, filename)], Json(document)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(export))]
pub struct Docs;
