//! Invoices: listing and reading (the tenant's own; the admin's across tenants), and payments
//! recorded by hand (a bank transfer the payment provider never saw).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::billing::invoice::InvoiceLine;
use domain::billing::money::format;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{page_limit, parse_time_cursor, time_cursor, Page};
use crate::app::AppState;
use crate::auth::{Admin, Caller, TenantCaller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery};

/// The invoice routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/invoices", get(list))
        .route("/v1/invoices/upcoming", get(upcoming))
        .route("/v1/invoices/{id}", get(read))
        .route("/v1/invoices/{id}/pay", post(pay))
        .route("/v1/invoices/{id}/void", post(void))
}

/// The columns of [`InvoiceRow`].
pub const INVOICE_COLUMNS: &str = "id, number, tenant_id, period_start, period_end, currency, status, lines, subtotal, tax, total,
     credit_applied, amount_due, issued_at, due_at, paid_at, payment_failed_at,
     (SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'number', c.number, 'invoice_id', c.invoice_id,
                 'subtotal', to_char(c.subtotal, 'FM9999999999990.00'), 'tax', to_char(c.tax, 'FM9999999999990.00'),
                 'total', to_char(c.total, 'FM9999999999990.00'), 'reason', c.reason,
                 'created_at', to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
                 ORDER BY c.number), '[]'::jsonb)
      FROM rm.credit_notes c WHERE c.invoice_id = rm.invoices.id) AS credit_notes";

/// An invoice as the read model has it.
#[derive(Debug, sqlx::FromRow)]
pub struct InvoiceRow {
    id: Uuid,
    number: String,
    tenant_id: Uuid,
    period_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
    currency: String,
    status: String,
    lines: sqlx::types::Json<Vec<InvoiceLine>>,
    subtotal: Decimal,
    tax: Decimal,
    total: Decimal,
    credit_applied: Decimal,
    amount_due: Decimal,
    issued_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    payment_failed_at: Option<DateTime<Utc>>,
    credit_notes: sqlx::types::Json<Vec<CreditNoteRow>>,
}

/// A credit note as the read model has it.
#[derive(Debug, Deserialize, sqlx::FromRow)]
pub struct CreditNoteRow {
    pub id: Uuid,
    pub number: String,
    pub invoice_id: Uuid,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// The credit note resource: money as two-decimal strings.
pub fn credit_note_json(c: &CreditNoteRow) -> Value {
    json!({
        "id": c.id,
        "number": c.number,
        "invoice_id": c.invoice_id,
        "subtotal": format(c.subtotal),
        "tax": format(c.tax),
        "total": format(c.total),
        "reason": c.reason,
        "created_at": c.created_at,
    })
}

/// An invoice line: money as two-decimal strings.
fn line_json(l: &InvoiceLine) -> Value {
    json!({"kind": l.kind, "description": l.description, "quantity": l.quantity.normalize(), "unit_price": format(l.unit_price), "amount": format(l.amount)})
}

/// The invoice resource: money as two-decimal strings.
pub fn invoice_json(r: InvoiceRow) -> Value {
    let lines: Vec<Value> = r.lines.0.iter().map(line_json).collect();
    json!({
        "id": r.id,
        "number": r.number,
        "tenant_id": r.tenant_id,
        "period_start": r.period_start,
        "period_end": r.period_end,
        "currency": r.currency,
        "status": r.status,
        "lines": lines,
        "subtotal": format(r.subtotal),
        "tax": format(r.tax),
        "total": format(r.total),
        "credit_applied": format(r.credit_applied),
        "amount_due": format(r.amount_due),
        "credit_notes": r.credit_notes.0.iter().map(credit_note_json).collect::<Vec<_>>(),
        "issued_at": r.issued_at,
        "due_at": r.due_at,
        "paid_at": r.paid_at,
        "payment_failed_at": r.payment_failed_at,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(pattern = "^(draft|open|paid|void)$")]
    status: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/invoices?status&from&to&limit&cursor`: newest first; `from`/`to` bound `issued_at`
/// (`from` inclusive, `to` exclusive).
#[utoipa::path(
    get,
    path = "/v1/invoices",
    tag = "invoices",
    params(ListQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of invoices: {data, has_more, next_cursor}", body = crate::schemas::InvoicePage),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(State(state): State<AppState>, caller: Caller, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Page<Value>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(status) = q.status.as_deref() {
        if !["draft", "open", "paid", "void"].contains(&status) {
            return Err(ApiError::validation("status", "must be draft, open, paid or void"));
        }
    }
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let rows: Vec<InvoiceRow> = sqlx::query_as(&format!(
        "SELECT {INVOICE_COLUMNS} FROM rm.invoices
         WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR issued_at >= $3) AND ($4::timestamptz IS NULL OR issued_at < $4)
           AND ($5::timestamptz IS NULL OR (issued_at, id) < ($5, $6))
         ORDER BY issued_at DESC, id DESC LIMIT $7"
    ))
    .bind(caller.tenant_scope())
    .bind(q.status)
    .bind(q.from)
    .bind(q.to)
    .bind(cursor.map(|c| c.0))
    .bind(cursor.map(|c| c.1))
    .bind(limit + 1)
    .fetch_all(state.pool())
    .await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.issued_at, r.id));
    Ok(Json(Page { data: page.data.into_iter().map(invoice_json).collect(), has_more: page.has_more, next_cursor: page.next_cursor }))
}

/// `GET /v1/invoices/{id}`: another tenant's invoice is 404.
#[utoipa::path(
    get,
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = Uuid, Path, description = "Invoice id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The invoice with its lines", body = crate::schemas::Invoice),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "invoice")?;
    answer(&state, id, caller.tenant_scope()).await
}

/// Invoice `id` (of tenant `scope`, if given) as the API shows it; 404 if there is none.
async fn answer(state: &AppState, id: Uuid, scope: Option<Uuid>) -> Result<Json<Value>, ApiError> {
    let row: Option<InvoiceRow> =
        sqlx::query_as(&format!("SELECT {INVOICE_COLUMNS} FROM rm.invoices WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"))
            .bind(id)
            .bind(scope)
            .fetch_optional(state.pool())
            .await?;
    row.map(|r| Json(invoice_json(r))).ok_or_else(|| ApiError::not_found("invoice"))
}

/// `GET /v1/invoices/upcoming` (tenant): the invoice the next period start (or the trial's
/// end) would issue if nothing changed — the plan fee in advance, usage so far in arrears, late
/// usage, a pending plan change, account credit, tax — decided by the billing run's own code on
/// the subscription as it is now and not stored: `status: "draft"`, no `id` or `number`,
/// `issued_at` the instant it would be issued. 404 when nothing more will be invoiced.
#[utoipa::path(
    get,
    path = "/v1/invoices/upcoming",
    tag = "invoices",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The draft of the next invoice: {tenant_id, period_start, period_end, currency, status: draft, lines, subtotal, tax, total, issued_at, due_at}", body = crate::schemas::DraftInvoice),
        crate::openapi::AuthErrors,
        (status = 404, description = "NOT_FOUND: no invoice is coming (the subscription is cancelled, or ends at the period end with nothing to bill)", body = crate::openapi::ErrorBody)
    ),
)]
async fn upcoming(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<Value>, ApiError> {
    let subscription: Option<Uuid> = sqlx::query_scalar("SELECT id FROM rm.subscriptions WHERE tenant_id = $1")
        .bind(caller.tenant_id)
        .fetch_optional(state.pool())
        .await?;
    let nothing = || ApiError::not_found("upcoming invoice");
    let subscription = subscription.ok_or_else(nothing)?;
    let draft = state.accounts().subscriptions().upcoming_invoice(subscription).await?.ok_or_else(nothing)?;
    let domain::subscription::SubscriptionEvent::InvoiceIssued {
        period_start,
        period_end,
        currency,
        lines,
        subtotal,
        tax,
        total,
        credit_applied,
        issued_at,
        due_at,
        ..
    } = draft
    else {
        return Err(nothing());
    };
    let lines: Vec<Value> = lines.iter().map(line_json).collect();
    Ok(Json(json!({
        "tenant_id": caller.tenant_id,
        "period_start": period_start,
        "period_end": period_end,
        "currency": currency,
        "status": "draft",
        "lines": lines,
        "subtotal": format(subtotal),
        "tax": format(tax),
        "total": format(total),
        "credit_applied": format(credit_applied),
        "amount_due": format(total - credit_applied),
        "credit_notes": [],
        "issued_at": issued_at,
        "due_at": due_at,
    })))
}

/// How an invoice was paid outside the payment provider.
const PAYMENT_METHODS: [&str; 4] = ["bank_transfer", "card", "cash", "other"];

/// A payment made outside the payment provider.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PayBody {
    /// `bank_transfer`, `card`, `cash` or `other`.
    #[schema(example = "bank_transfer", pattern = "^(bank_transfer|card|cash|other)$")]
    method: String,
    /// The payment's own reference (1 to 255 characters), kept with the payment in the log.
    #[schema(min_length = 1, max_length = 255)]
    reference: Option<String>,
    /// When the money arrived (RFC 3339; default: now): not before the invoice was issued,
    /// not in the future.
    paid_at: Option<DateTime<Utc>>,
}

/// `POST /v1/invoices/{id}/pay` (admin) `{method, reference?, paid_at?}`: records a payment made
/// outside the payment provider (a bank transfer, cash) for the invoice's total. The invoice
/// becomes `paid`, with the same effect on dunning as the provider's `payment.succeeded`: a
/// past-due or suspended subscription whose failed invoices are all paid is active again, and
/// so is its tenant. Answers the invoice. An invoice that is already paid: 409
/// `INVALID_STATE_TRANSITION`.
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/pay",
    tag = "invoices",
    params(("id" = Uuid, Path, description = "Invoice id"), crate::openapi::IdempotencyHeader),
    request_body = PayBody,
    responses(
        (status = 200, description = "The invoice, now paid", body = crate::schemas::Invoice),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "INVALID_STATE_TRANSITION: the invoice is already paid", body = crate::openapi::ErrorBody)
    ),
)]
async fn pay(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PayBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "invoice")?;
    if !PAYMENT_METHODS.contains(&body.method.as_str()) {
        return Err(ApiError::validation("method", format!("must be one of {}", PAYMENT_METHODS.join(", "))));
    }
    if let Some(reference) = &body.reference {
        if reference.trim().is_empty() || reference.len() > 255 || reference.chars().any(char::is_control) {
            return Err(ApiError::validation("reference", "must be 1 to 255 characters without control characters"));
        }
    }
    let now = state.now();
    let paid_at = body.paid_at.unwrap_or(now);
    if paid_at > now + chrono::Duration::minutes(5) {
        return Err(ApiError::validation("paid_at", "must not be in the future"));
    }
    let invoice: Option<(Uuid, Uuid, String, Decimal, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT subscription_id, tenant_id, status, amount_due, currency, issued_at FROM rm.invoices WHERE id = $1")
            .bind(id)
            .fetch_optional(state.pool())
            .await?;
    let (subscription_id, tenant_id, status, amount_due, currency, issued_at) = invoice.ok_or_else(|| ApiError::not_found("invoice"))?;
    if status != "open" {
        return Err(ApiError::new(StatusCode::CONFLICT, "INVALID_STATE_TRANSITION", format!("the invoice is {status}")));
    }
    if paid_at < issued_at {
        return Err(ApiError::validation("paid_at", format!("must not be before the invoice was issued ({})", issued_at.to_rfc3339())));
    }
    let mut context = state.context(Some(tenant_id), commands::Actor::Admin);
    context.at = paid_at;
    let outcome =
        domain::subscription::PaymentOutcome::Succeeded { amount: amount_due, currency, offline: Some((body.method, body.reference)) };
    let app = state.clone();
    state
        .detach(async move {
            app.accounts().record_payment(subscription_id, format!("offline:{id}"), id, outcome, &context).await?;
            app.settle_all().await;
            Ok(())
        })
        .await?;
    answer(&state, id, None).await
}

/// `POST /v1/invoices/{id}/void` (admin): an open invoice with no payment becomes `void`: never
/// due again and never counted for dunning (a past-due or suspended subscription with no other
/// failed invoice is active again, and so is its tenant). Answers the invoice; a paid or void
/// invoice: 409 `INVALID_STATE_TRANSITION`.
#[utoipa::path(
    post,
    path = "/v1/invoices/{id}/void",
    tag = "invoices",
    params(("id" = Uuid, Path, description = "Invoice id"), crate::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "The invoice, now void", body = crate::schemas::Invoice),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "INVALID_STATE_TRANSITION: the invoice is paid or void", body = crate::openapi::ErrorBody)
    ),
)]
async fn void(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id, "invoice")?;
    let owner: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT subscription_id, tenant_id FROM rm.invoices WHERE id = $1").bind(id).fetch_optional(state.pool()).await?;
    let (subscription_id, tenant_id) = owner.ok_or_else(|| ApiError::not_found("invoice"))?;
    let context = state.context(Some(tenant_id), commands::Actor::Admin);
    let command = domain::subscription::SubscriptionCommand::VoidInvoice { invoice_id: id, at: context.at };
    state.subscription_command(subscription_id, command, context).await?;
    answer(&state, id, None).await
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, upcoming, read, pay, void), components(schemas(PayBody)))]
pub struct Docs;
