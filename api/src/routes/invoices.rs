//! Invoices: listing and reading (the tenant's own; the admin's across tenants), and payments
//! recorded by hand (a bank transfer the payment provider never saw).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::billing::invoice::InvoiceLine;
use projections::billing::reads::{CreditNoteRow, InvoiceFilter, InvoiceOwner, InvoiceRow};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, parse_time_cursor, time_cursor, Page};
use crate::amounts::{Money, Quantity};
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
/// An invoice line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = InvoiceLine)]
pub struct LineView {
    /// `plan`, `proration`, `addon`, `overage`, `usage`, `discount` or `credit`.
    #[schema(value_type = String, pattern = "^(plan|proration|addon|overage|usage|discount|credit)$")]
    kind: domain::billing::invoice::LineKind,
    /// For people.
    description: String,
    /// Units.
    quantity: Quantity,
    /// Price of one unit.
    unit_price: Money,
    /// `quantity × unit_price`, rounded half-up to the cent.
    amount: Money,
    /// Start of the service period the line is for (plan, add-on and proration lines: the time
    /// charged or credited; usage and overage lines: the period whose usage they bill); absent
    /// on lines without one (discount, credit).
    #[serde(skip_serializing_if = "Option::is_none")]
    period_start: Option<DateTime<Utc>>,
    /// End of that period.
    #[serde(skip_serializing_if = "Option::is_none")]
    period_end: Option<DateTime<Utc>>,
}

impl From<&InvoiceLine> for LineView {
    fn from(l: &InvoiceLine) -> Self {
        Self {
            kind: l.kind,
            description: l.description.clone(),
            quantity: l.quantity.into(),
            unit_price: l.unit_price.into(),
            amount: l.amount.into(),
            period_start: l.period.map(|p| p.start),
            period_end: l.period.map(|p| p.end),
        }
    }
}

/// A credit note.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = CreditNote)]
pub struct CreditNoteView {
    /// Its id.
    pub id: Uuid,
    /// `CN-<CODE>-000001`.
    pub number: String,
    /// The invoice it credits.
    pub invoice_id: Uuid,
    /// Before tax.
    pub subtotal: Money,
    /// Tax.
    pub tax: Money,
    /// With tax.
    pub total: Money,
    /// Why.
    pub reason: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<&CreditNoteRow> for CreditNoteView {
    fn from(c: &CreditNoteRow) -> Self {
        Self {
            id: c.id,
            number: c.number.clone(),
            invoice_id: c.invoice_id,
            subtotal: c.subtotal.into(),
            tax: c.tax.into(),
            total: c.total.into(),
            reason: c.reason.clone(),
            created_at: c.created_at,
        }
    }
}

/// An issued invoice.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Invoice)]
pub struct InvoiceView {
    /// Its id.
    id: Uuid,
    /// `<CODE>-000001`, gap-free per tenant.
    number: String,
    /// Whose.
    tenant_id: Uuid,
    /// The period it bills.
    period_start: DateTime<Utc>,
    /// End of that period.
    period_end: DateTime<Utc>,
    /// ISO 4217.
    currency: String,
    /// `open`, `paid` or `void`.
    #[schema(pattern = "^(draft|open|paid|void)$")]
    status: String,
    /// The lines.
    lines: Vec<LineView>,
    /// Before tax.
    subtotal: Money,
    /// `subtotal × tax_rate / 100`, rounded.
    tax: Money,
    /// With tax.
    total: Money,
    /// Account credit applied.
    credit_applied: Money,
    /// What is left to pay.
    amount_due: Money,
    /// Credit notes against it.
    credit_notes: Vec<CreditNoteView>,
    /// Issued.
    issued_at: DateTime<Utc>,
    /// Due.
    due_at: DateTime<Utc>,
    /// Paid, if it was.
    paid_at: Option<DateTime<Utc>>,
    /// When its last payment failed, if one did.
    payment_failed_at: Option<DateTime<Utc>>,
}

impl From<InvoiceRow> for InvoiceView {
    fn from(r: InvoiceRow) -> Self {
        Self {
            id: r.id,
            number: r.number,
            tenant_id: r.tenant_id,
            period_start: r.period_start,
            period_end: r.period_end,
            currency: r.currency,
            status: r.status,
            lines: r.lines.0.iter().map(LineView::from).collect(),
            subtotal: r.subtotal.into(),
            tax: r.tax.into(),
            total: r.total.into(),
            credit_applied: r.credit_applied.into(),
            amount_due: r.amount_due.into(),
            credit_notes: r.credit_notes.0.iter().map(CreditNoteView::from).collect(),
            issued_at: r.issued_at,
            due_at: r.due_at,
            paid_at: r.paid_at,
            payment_failed_at: r.payment_failed_at,
        }
    }
}

/// The invoice the next period start would issue (not stored: no id, no number).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DraftInvoice {
    /// Whose.
    tenant_id: Uuid,
    /// The period it would bill.
    period_start: DateTime<Utc>,
    /// End of that period.
    period_end: DateTime<Utc>,
    /// ISO 4217.
    currency: String,
    /// `draft`.
    #[schema(pattern = "^draft$")]
    status: &'static str,
    /// The lines.
    lines: Vec<LineView>,
    /// Before tax.
    subtotal: Money,
    /// Tax.
    tax: Money,
    /// With tax.
    total: Money,
    /// Credit it would apply.
    credit_applied: Money,
    /// What would be due.
    amount_due: Money,
    /// Always empty.
    credit_notes: Vec<CreditNoteView>,
    /// When it would be issued.
    issued_at: DateTime<Utc>,
    /// When it would be due.
    due_at: DateTime<Utc>,
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
        (status = 200, description = "A page of invoices: {data, has_more, next_cursor}", body = Page<InvoiceView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<InvoiceView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(status) = q.status.as_deref() {
        if !["draft", "open", "paid", "void"].contains(&status) {
            return Err(ApiError::validation("status", "must be draft, open, paid or void"));
        }
    }
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let filter = InvoiceFilter { tenant_id: caller.tenant_scope(), status: q.status, from: q.from, to: q.to };
    let rows = state.reads().billing().invoices(filter, cursor, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.issued_at, r.id));
    Ok(Json(Page { data: page.data.into_iter().map(InvoiceView::from).collect(), has_more: page.has_more, next_cursor: page.next_cursor }))
}

/// `GET /v1/invoices/{id}`: another tenant's invoice is 404.
#[utoipa::path(
    get,
    path = "/v1/invoices/{id}",
    tag = "invoices",
    params(("id" = Uuid, Path, description = "Invoice id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The invoice with its lines", body = InvoiceView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<InvoiceView>, ApiError> {
    let id = path_id(&id, "invoice")?;
    answer(&state, id, caller.tenant_scope()).await
}

/// Invoice `id` (of tenant `scope`, if given) as the API shows it; 404 if there is none.
async fn answer(state: &AppState, id: Uuid, scope: Option<Uuid>) -> Result<Json<InvoiceView>, ApiError> {
    let row = state.reads().billing().invoice(id, scope).await?;
    row.map(|r| Json(r.into())).ok_or_else(|| ApiError::not_found("invoice"))
}

/// Invoice `id` as the read model has it (any tenant's).
pub(crate) async fn load(state: &AppState, id: Uuid) -> Result<InvoiceView, ApiError> {
    Ok(answer(state, id, None).await?.0)
}

#[utoipa::path(
    get,
    path = "/v1/invoices/upcoming",
    tag = "invoices",
    params(crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The draft of the next invoice: {tenant_id, period_start, period_end, currency, status: draft, lines, subtotal, tax, total, issued_at, due_at}", body = DraftInvoice),
        crate::openapi::AuthErrors,
        (status = 404, description = "NOT_FOUND: no invoice is coming (the subscription is cancelled, or ends at the period end with nothing to bill)", body = crate::openapi::ErrorBody)
    ),
)]
async fn upcoming(State(state): State<AppState>, caller: TenantCaller) -> Result<Json<DraftInvoice>, ApiError> {
    let subscription = state.reads().billing().subscription_id_of(caller.tenant_id).await?;
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
    Ok(Json(DraftInvoice {
        tenant_id: caller.tenant_id,
        period_start,
        period_end,
        currency,
        status: "draft",
        lines: lines.iter().map(LineView::from).collect(),
        subtotal: subtotal.into(),
        tax: tax.into(),
        total: total.into(),
        credit_applied: credit_applied.into(),
        amount_due: (total - credit_applied).into(),
        credit_notes: Vec::new(),
        issued_at,
        due_at,
    }))
}

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
        (status = 200, description = "The invoice, now paid", body = InvoiceView),
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
) -> Result<Json<InvoiceView>, ApiError> {
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
    let invoice = state.reads().billing().invoice_owner(id).await?;
    let InvoiceOwner { subscription_id, tenant_id, status, amount_due, currency, issued_at } =
        invoice.ok_or_else(|| ApiError::not_found("invoice"))?;
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
        (status = 200, description = "The invoice, now void", body = InvoiceView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
        (status = 409, description = "INVALID_STATE_TRANSITION: the invoice is paid or void", body = crate::openapi::ErrorBody)
    ),
)]
async fn void(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<InvoiceView>, ApiError> {
    let id = path_id(&id, "invoice")?;
    let owner = state.reads().billing().invoice_owner(id).await?;
    let InvoiceOwner { subscription_id, tenant_id, .. } = owner.ok_or_else(|| ApiError::not_found("invoice"))?;
    let context = state.context(Some(tenant_id), commands::Actor::Admin);
    let command = domain::subscription::SubscriptionCommand::VoidInvoice { invoice_id: id, at: context.at };
    state.subscription_command(subscription_id, command, context).await?;
    answer(&state, id, None).await
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, upcoming, read, pay, void), components(schemas(PayBody)))]
pub struct Docs;
