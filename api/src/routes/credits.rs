//! Account credit and credit notes: grants by the platform admin, the ledger a tenant reads,
//! and credit notes against issued invoices.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::subscription::{SubscriptionCommand, SubscriptionEvent};
use projections::billing::reads::InvoiceOwner;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::invoices::CreditNoteView;
use crate::amounts::Money;
use crate::app::AppState;
use crate::auth::{Admin, Caller, TenantCaller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson};

/// The credit routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{id}/credits", post(grant))
        .route("/v1/credits", get(ledger))
        .route("/v1/invoices/{id}/credit-notes", post(credit_note))
}

/// An amount of money in a request: a decimal string (the subscription checks its range and
/// places).
fn money(input: &str, field: &str) -> Result<Decimal, ApiError> {
    input.trim().parse().map_err(|_| ApiError::validation(field, "must be an amount such as \"10.00\" (positive, at most two decimals)"))
}

/// A grant of account credit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    /// How much, in the tenant's currency: a positive decimal string with at most two places.
    #[schema(example = "25.00", pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$")]
    amount: String,
    /// Why (1 to 500 characters), shown in the tenant's credit ledger.
    #[schema(example = "Goodwill after the March outage", min_length = 1, max_length = 500)]
    reason: String,
    /// When what is left of the grant stops counting (RFC 3339, in the future); absent: never.
    expires_at: Option<DateTime<Utc>>,
}

/// `POST /v1/tenants/{id}/credits` (admin) `{amount, reason, expires_at?}`: grants account
/// credit. Credit is applied after tax to the invoices issued from now on (grants that expire
/// soonest first), never more than an invoice's total; an invoice left with nothing due is paid
/// at issue. Answers 201 `{id, amount, reason, expires_at, created_at, balance}`.
#[utoipa::path(
    post,
    path = "/v1/tenants/{id}/credits",
    tag = "credits",
    params(("id" = String, Path, description = "Tenant id, or its code (acme-clinic)"), crate::openapi::IdempotencyHeader),
    request_body = GrantBody,
    responses(
        (status = 201, description = "The grant, and the tenant's balance after it", body = CreditGrant),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "INVALID_STATE_TRANSITION: the subscription is cancelled", body = crate::openapi::ErrorBody)
    ),
)]
async fn grant(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<(StatusCode, Json<CreditGrant>), ApiError> {
    let amount = money(&body.amount, "amount")?;
    let tenant_id = state.resolve_tenant(&id).await?;
    let subscription = subscription_of(&state, tenant_id).await?;
    let context = state.context(Some(tenant_id), caller.actor());
    let grant_id = Uuid::now_v7();
    let command = SubscriptionCommand::GrantCredit { grant_id, amount, reason: body.reason, expires_at: body.expires_at, at: context.at };
    let committed = state.subscription_command(subscription, command, context).await?;
    let granted = committed.events.iter().find_map(|e| match &e.payload {
        SubscriptionEvent::CreditGranted { amount, reason, expires_at, at, .. } => Some((*amount, reason.clone(), *expires_at, *at)),
        _ => None,
    });
    let (amount, reason, expires_at, at) = granted.ok_or_else(|| ApiError::internal("the grant appended no event"))?;
    let balance = committed.state.available_credit(state.now());
    let grant = CreditGrant { id: grant_id, amount: amount.into(), reason, expires_at, created_at: at, balance: balance.into() };
    Ok((StatusCode::CREATED, Json(grant)))
}

/// The subscription of `tenant_id`; 404 if the tenant has none.
async fn subscription_of(state: &AppState, tenant_id: Uuid) -> Result<Uuid, ApiError> {
    state.reads().tenants().subscription_id(tenant_id).await?.ok_or_else(|| ApiError::not_found("tenant"))
}

/// A credit grant and the balance after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditGrant {
    /// The grant's id.
    id: Uuid,
    /// Granted.
    amount: Money,
    /// Why.
    reason: String,
    /// When what is left of it expires.
    expires_at: Option<DateTime<Utc>>,
    /// When.
    created_at: DateTime<Utc>,
    /// The tenant's available credit after it.
    balance: Money,
}

/// One movement of account credit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditTransaction {
    /// Positive: granted; negative: applied or expired.
    amount: Money,
    /// Why.
    reason: String,
    /// The invoice it was applied to.
    invoice_id: Option<Uuid>,
    /// When a grant expires.
    expires_at: Option<DateTime<Utc>>,
    /// When.
    created_at: DateTime<Utc>,
}

/// A tenant's account credit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditLedger {
    /// Available now.
    balance: Money,
    /// ISO 4217.
    currency: String,
    /// Oldest first.
    transactions: Vec<CreditTransaction>,
}

/// `GET /v1/credits` (tenant; the admin with `X-Tenant-ID`): `{balance, currency,
/// transactions}`. `balance` is the credit that counts now (grants past their expiry do not);
/// `transactions` are every change of the balance, oldest first: grants (positive, with their
/// `expires_at`), credit applied to an invoice (negative, with its `invoice_id`), time carried
/// from a downgrade and credit notes on paid invoices (positive), expiries (negative).
#[utoipa::path(
    get,
    path = "/v1/credits",
    tag = "credits",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "{balance, currency, transactions: [{amount, reason, invoice_id, expires_at, created_at}]}", body = CreditLedger),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn ledger(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<CreditLedger>, ApiError> {
    let subscription = state.reads().billing().subscription_of(caller.tenant_id).await?;
    let (_, subscription) = subscription.ok_or_else(|| ApiError::not_found("subscription"))?;
    let rows = state.reads().billing().credit_transactions(caller.tenant_id).await?;
    let transactions = rows
        .into_iter()
        .map(|r| CreditTransaction {
            amount: r.amount.into(),
            reason: r.reason,
            invoice_id: r.invoice_id,
            expires_at: r.expires_at,
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(CreditLedger {
        balance: subscription.available_credit(state.now()).into(),
        currency: subscription.currency.clone(),
        transactions,
    }))
}

/// A credit note.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditNoteBody {
    /// The credited amount before tax: a positive decimal string with at most two places.
    #[schema(example = "10.00", pattern = r"^[0-9]{1,10}(\.[0-9]{1,2})?$")]
    amount: String,
    /// Why (1 to 500 characters).
    #[schema(example = "Service outage on 3 March", min_length = 1, max_length = 500)]
    reason: String,
}

/// `POST /v1/invoices/{id}/credit-notes` (admin) `{amount, reason}`: a partial or full credit
/// note: `subtotal = amount`, `tax = amount × the invoice's tax rate / 100` (half away from
/// zero), numbered per tenant `CN-<CODE>-000001`. On an open invoice it lowers `amount_due` (an
/// invoice left with nothing due is `paid`, and no longer counts for dunning; what exceeds the
/// amount due goes to the credit balance); on a paid invoice its total goes to the credit
/// balance. The credit notes of an invoice never exceed its `subtotal` (409 `CONFLICT`); a void
/// invoice takes none (409 `INVALID_STATE_TRANSITION`).
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/credit-notes",
    tag = "invoices",
    params(("id" = Uuid, Path, description = "Invoice id"), crate::openapi::IdempotencyHeader),
    request_body = CreditNoteBody,
    responses(
        (status = 201, description = "The credit note: {id, number, invoice_id, subtotal, tax, total, reason, created_at}", body = CreditNoteView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "CONFLICT: the credit notes would exceed the invoice's subtotal; INVALID_STATE_TRANSITION: the invoice is void", body = crate::openapi::ErrorBody)
    ),
)]
async fn credit_note(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CreditNoteBody>,
) -> Result<(StatusCode, Json<CreditNoteView>), ApiError> {
    let invoice_id = path_id(&id, "invoice")?;
    let amount = money(&body.amount, "amount")?;
    let owner = state.reads().billing().invoice_owner(invoice_id).await?;
    let InvoiceOwner { subscription_id: subscription, tenant_id, .. } = owner.ok_or_else(|| ApiError::not_found("invoice"))?;
    let context = state.context(Some(tenant_id), caller.actor());
    let command = SubscriptionCommand::IssueCreditNote { invoice_id, amount, reason: body.reason, at: context.at };
    let committed = state.subscription_command(subscription, command, context).await?;
    let note = committed.events.iter().find_map(|e| match &e.payload {
        SubscriptionEvent::CreditNoteIssued { credit_note_id, number, invoice_id, subtotal, tax, total, reason, created_at, .. } => {
            Some(CreditNoteView {
                id: *credit_note_id,
                number: number.clone(),
                invoice_id: *invoice_id,
                subtotal: (*subtotal).into(),
                tax: (*tax).into(),
                total: (*total).into(),
                reason: reason.clone(),
                created_at: *created_at,
            })
        }
        _ => None,
    });
    let note = note.ok_or_else(|| ApiError::internal("the credit note appended no event"))?;
    Ok((StatusCode::CREATED, Json(note)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(grant, ledger, credit_note), components(schemas(GrantBody, CreditNoteBody)))]
pub struct Docs;
