//! Revenue recognition (admin): the month table, an invoice's schedule, the double-entry journal
//! (JSON or CSV), and closing and reopening months. The rule is
//! `domain::billing::revenue_recognition`; the figures are the `revenue` projection's.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use domain::billing::revenue_recognition::Month;
use domain::books::BooksEvent;
use projections::revenue::reads::{EntryRow, MonthFigures};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::amounts::Money;
use crate::app::AppState;
use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery};

/// The revenue routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/revenue", get(report))
        .route("/v1/admin/revenue/close", post(close))
        .route("/v1/admin/revenue/reopen", post(reopen))
        .route("/v1/admin/revenue/invoices/{id}", get(invoice))
        .route("/v1/admin/revenue/journal", get(journal))
}

/// The most months one report spans.
const MAX_MONTHS: usize = 240;

fn month(input: &str, field: &str) -> Result<Month, ApiError> {
    Month::parse(input.trim(), field).map_err(|e| ApiError::validation(&e.field, e.message))
}

/// `?from&to&tenant`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// First month (`2027-01`); default: the books' first month (or this month).
    from: Option<String>,
    /// Last month (`2027-12`), at most 240 months after `from`; default: this month, or the
    /// last month anything is recognized in, whichever is later.
    to: Option<String>,
    /// One tenant only: its id or code.
    tenant: Option<String>,
}

/// One month of the books.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksMonth)]
struct MonthView {
    /// `YYYY-MM` (UTC).
    #[schema(example = "2027-03")]
    month: String,
    /// Subtotals of the invoices issued in the month, net of the credit notes and voids booked in it (tax is never revenue).
    billed: Money,
    /// Revenue recognized in the month (net of reversals).
    recognized: Money,
    /// Deferred revenue at the month's start.
    deferred_opening: Money,
    /// `deferred_opening + billed − recognized`.
    deferred_closing: Money,
    /// Whether the month is closed (its figures never change).
    closed: bool,
}

impl From<&MonthFigures> for MonthView {
    fn from(m: &MonthFigures) -> Self {
        Self {
            month: m.month.to_string(),
            billed: m.billed.into(),
            recognized: m.recognized.into(),
            deferred_opening: m.deferred_opening.into(),
            deferred_closing: m.deferred_closing.into(),
            closed: m.closed,
        }
    }
}

/// The sums over the months asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksTotals)]
struct Totals {
    /// Billed in all.
    billed: Money,
    /// Recognized in all.
    recognized: Money,
    /// Deferred at the first month's start.
    deferred_opening: Money,
    /// Deferred at the last month's end.
    deferred_closing: Money,
}

/// The books, month by month.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksReport)]
struct Report {
    /// The months, in order.
    months: Vec<MonthView>,
    /// Their sums.
    totals: Totals,
    /// The latest closed month (`null`: none is).
    closed_through: Option<String>,
}

/// `GET /v1/admin/revenue?from=2027-01&to=2027-12&tenant=` (admin): per month what was billed,
/// recognized and deferred. Recognition is straight-line by the second over each line's service
/// period (usage as consumed), with running-total rounding; credit notes and voids never change
/// an earlier month; a closed month never changes (catch-up into the first open month).
#[utoipa::path(
    get,
    path = "/v1/admin/revenue",
    tag = "revenue",
    params(ReportQuery),
    responses(
        (status = 200, description = "The months", body = Report),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
    ),
)]
async fn report(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<ReportQuery>) -> Result<Json<Report>, ApiError> {
    let tenant = match q.tenant.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(reference) => Some(state.resolve_tenant(reference).await?),
        None => None,
    };
    let reads = state.reads();
    let this_month = Month::of(state.now());
    let from = match q.from.as_deref() {
        Some(from) => month(from, "from")?,
        None => reads.revenue().first_month().await?.unwrap_or(this_month).min(this_month),
    };
    let to = match q.to.as_deref() {
        Some(to) => month(to, "to")?,
        None => reads.revenue().last_month().await?.unwrap_or(this_month).max(this_month).max(from),
    };
    if to < from {
        return Err(ApiError::validation("to", "must not be before from"));
    }
    let mut span = 1;
    let mut m = from;
    while m < to {
        m = m.next();
        span += 1;
        if span > MAX_MONTHS {
            return Err(ApiError::validation("to", format!("a report spans at most {MAX_MONTHS} months")));
        }
    }
    let months = reads.revenue().months(from, to, tenant).await?;
    let closed_through = reads.revenue().closed_through().await?;
    let totals = Totals {
        billed: months.iter().map(|m| m.billed).sum::<Decimal>().into(),
        recognized: months.iter().map(|m| m.recognized).sum::<Decimal>().into(),
        deferred_opening: months.first().map_or(Decimal::ZERO, |m| m.deferred_opening).into(),
        deferred_closing: months.last().map_or(Decimal::ZERO, |m| m.deferred_closing).into(),
    };
    Ok(Json(Report { months: months.iter().map(MonthView::from).collect(), totals, closed_through: closed_through.map(|m| m.to_string()) }))
}

/// A month to close.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    /// `YYYY-MM`: the earliest open month, once it has ended.
    #[schema(example = "2027-03")]
    month: String,
}

/// A month to reopen.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReopenBody {
    /// `YYYY-MM`: the latest closed month.
    #[schema(example = "2027-03")]
    month: String,
    /// Why (1 to 500 characters; audited).
    #[schema(example = "Late credit note for ACME", min_length = 1, max_length = 500)]
    reason: String,
}

/// A close or reopen, as recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksClose)]
struct CloseView {
    /// The month.
    #[schema(example = "2027-03")]
    month: String,
    /// `closed` or `reopened`.
    #[schema(pattern = "^(closed|reopened)$")]
    status: &'static str,
    /// The latest closed month after it (`null`: none is).
    closed_through: Option<String>,
    /// Why (a reopen).
    reason: Option<String>,
    /// Who (`admin`, or the key).
    actor: String,
    /// When.
    at: DateTime<Utc>,
}

/// A close or reopen as the event the command appended records it.
fn recorded(committed: &commands::Committed<domain::books::Books>, actor: String) -> Result<CloseView, ApiError> {
    let closed_through = committed.state.closed_through().map(|m| m.to_string());
    committed
        .events
        .iter()
        .map(|e| match &e.payload {
            BooksEvent::MonthClosed { month, at } => CloseView {
                month: month.to_string(),
                status: "closed",
                closed_through: closed_through.clone(),
                reason: None,
                actor: actor.clone(),
                at: *at,
            },
            BooksEvent::MonthReopened { month, reason, at } => CloseView {
                month: month.to_string(),
                status: "reopened",
                closed_through: closed_through.clone(),
                reason: Some(reason.clone()),
                actor: actor.clone(),
                at: *at,
            },
        })
        .next()
        .ok_or_else(|| ApiError::internal("the books command appended no event"))
}

/// `POST /v1/admin/revenue/close {month}` (admin): closes a month that has ended, in order (the
/// earliest open month first: the books' first month, or the month after the latest closed one;
/// otherwise 409 `CONFLICT`). Its figures never change afterwards: whatever would change them
/// (a late invoice, a credit note, a void, usage billed late) is booked in the first open month.
#[utoipa::path(
    post,
    path = "/v1/admin/revenue/close",
    tag = "revenue",
    params(crate::openapi::IdempotencyHeader),
    request_body = CloseBody,
    responses(
        (status = 200, description = "The month is closed", body = CloseView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 409, description = "CONFLICT: the month has not ended, is closed already, or is not the earliest open month", body = crate::openapi::ErrorBody)
    ),
)]
async fn close(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<CloseBody>,
) -> Result<Json<CloseView>, ApiError> {
    let month = month(&body.month, "month")?;
    let context = state.context(None, caller.actor());
    let actor = context.actor.to_string();
    let app = state.clone();
    state
        .detach(async move {
            // The books' first month as of everything appended so far.
            app.settle_all().await;
            let first = app.reads().revenue().first_month().await?;
            let committed = app.books().close(month, first, &context).await?;
            app.settle(domain::books::BOOKS_ID, &committed).await;
            recorded(&committed, actor)
        })
        .await
        .map(Json)
}

/// `POST /v1/admin/revenue/reopen {month, reason}` (admin): reopens the latest closed month
/// (audited with actor and reason); 409 `CONFLICT` for any other month.
#[utoipa::path(
    post,
    path = "/v1/admin/revenue/reopen",
    tag = "revenue",
    params(crate::openapi::IdempotencyHeader),
    request_body = ReopenBody,
    responses(
        (status = 200, description = "The month is open again", body = CloseView),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        (status = 409, description = "CONFLICT: not the latest closed month", body = crate::openapi::ErrorBody)
    ),
)]
async fn reopen(
    State(state): State<AppState>,
    _: Admin,
    caller: Caller,
    ApiJson(body): ApiJson<ReopenBody>,
) -> Result<Json<CloseView>, ApiError> {
    let month = month(&body.month, "month")?;
    let context = state.context(None, caller.actor());
    let actor = context.actor.to_string();
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.books().reopen(month, body.reason, &context).await?;
            app.settle(domain::books::BOOKS_ID, &committed).await;
            recorded(&committed, actor)
        })
        .await
        .map(Json)
}

/// A month's amount of a schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksScheduleMonth)]
struct ScheduleMonth {
    /// `YYYY-MM`.
    #[schema(example = "2027-01")]
    month: String,
    /// Recognized in it.
    amount: Money,
}

/// A line and its schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksScheduleLine)]
struct ScheduleLine {
    /// As on the invoice.
    description: String,
    /// The line's kind.
    #[schema(value_type = String, pattern = "^(plan|proration|addon|overage|usage|discount|credit)$")]
    kind: domain::billing::invoice::LineKind,
    /// As on the invoice.
    amount: Money,
    /// Taken from it by credit notes and a void.
    credited: Money,
    /// What is recognized in each month (sums to `amount − credited`).
    schedule: Vec<ScheduleMonth>,
}

/// An invoice's revenue schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksSchedule)]
struct InvoiceScheduleView {
    /// The invoice.
    invoice_id: Uuid,
    /// Its number.
    number: String,
    /// Whose.
    tenant_id: Uuid,
    /// Whether it was voided.
    voided: bool,
    /// Its lines.
    lines: Vec<ScheduleLine>,
}

/// `GET /v1/admin/revenue/invoices/{id}` (admin): each line of an invoice with what is recognized
/// in each month (a discount's allocation follows the lines it reduces).
#[utoipa::path(
    get,
    path = "/v1/admin/revenue/invoices/{id}",
    tag = "revenue",
    params(("id" = Uuid, Path, description = "The invoice id")),
    responses(
        (status = 200, description = "The schedule", body = InvoiceScheduleView),
        crate::openapi::AuthErrors,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
    ),
)]
async fn invoice(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> Result<Json<InvoiceScheduleView>, ApiError> {
    let id = path_id(&id, "invoice")?;
    let found = state.reads().revenue().invoice(id).await?.ok_or_else(|| ApiError::not_found("invoice"))?;
    let lines = found
        .revenue
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| ScheduleLine {
            description: line.description.clone(),
            kind: line.kind,
            amount: line.amount.into(),
            credited: found.revenue.line_credited(i).into(),
            schedule: found
                .revenue
                .line_schedule(i)
                .into_iter()
                .map(|(month, amount)| ScheduleMonth { month: month.to_string(), amount: amount.into() })
                .collect(),
        })
        .collect();
    Ok(Json(InvoiceScheduleView { invoice_id: id, number: found.number, tenant_id: found.tenant_id, voided: found.voided, lines }))
}

/// `?month&tenant`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    /// The month (`2027-03`).
    month: String,
    /// One tenant only: its id or code.
    tenant: Option<String>,
}

/// One journal line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksJournalLine)]
struct JournalLine {
    /// Booked on.
    date: NaiveDate,
    /// `accounts_receivable`, `deferred_revenue`, `revenue`, `tax_payable` or `contra_revenue`.
    #[schema(pattern = "^(accounts_receivable|deferred_revenue|revenue|tax_payable|contra_revenue)$")]
    account: &'static str,
    /// Debit (`0.00` on a credit line).
    debit: Money,
    /// Credit (`0.00` on a debit line).
    credit: Money,
    /// The invoice.
    invoice_id: Uuid,
    /// Whose.
    tenant_id: Uuid,
    /// What for.
    memo: String,
}

/// The journal of a month.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = BooksJournal)]
struct JournalView {
    /// `YYYY-MM`.
    month: String,
    /// The lines, in the order they were booked; debits equal credits for every invoice.
    lines: Vec<JournalLine>,
    /// The sum of the debits.
    total_debit: Money,
    /// The sum of the credits (equal to `total_debit`).
    total_credit: Money,
}

/// The journal lines of one booked entry: each a balanced pair (or triple).
fn journal_lines(entry: &EntryRow, month: Month) -> Vec<JournalLine> {
    let line = |account: &'static str, debit: Decimal, credit: Decimal, memo: &str| JournalLine {
        date: entry.date,
        account,
        debit: debit.into(),
        credit: credit.into(),
        invoice_id: entry.invoice_id,
        tenant_id: entry.tenant_id,
        memo: memo.to_owned(),
    };
    // `account` debited when `amount` is positive, credited when negative (and the other way for `other`).
    let pair = |debit_account: &'static str, credit_account: &'static str, amount: Decimal, memo: &str| {
        if amount >= Decimal::ZERO {
            vec![line(debit_account, amount, Decimal::ZERO, memo), line(credit_account, Decimal::ZERO, amount, memo)]
        } else {
            vec![line(credit_account, -amount, Decimal::ZERO, memo), line(debit_account, Decimal::ZERO, -amount, memo)]
        }
    };
    let mut lines = Vec::new();
    match entry.kind.as_str() {
        "issued" | "credited" => {
            // An invoice: receivable against deferred revenue and tax; a credit the other way.
            let sign = if entry.kind == "issued" { Decimal::ONE } else { -Decimal::ONE };
            let (subtotal, tax) = (entry.amount * sign, entry.tax * sign);
            let (receivable, deferred, taxes) = (subtotal + tax, subtotal, tax);
            let memo = entry.memo.as_str();
            if entry.kind == "issued" {
                lines.push(line("accounts_receivable", receivable.max(Decimal::ZERO), (-receivable).max(Decimal::ZERO), memo));
                lines.push(line("deferred_revenue", (-deferred).max(Decimal::ZERO), deferred.max(Decimal::ZERO), memo));
                if !taxes.is_zero() {
                    lines.push(line("tax_payable", (-taxes).max(Decimal::ZERO), taxes.max(Decimal::ZERO), memo));
                }
            } else {
                lines.push(line("deferred_revenue", deferred.max(Decimal::ZERO), (-deferred).max(Decimal::ZERO), memo));
                if !taxes.is_zero() {
                    lines.push(line("tax_payable", taxes.max(Decimal::ZERO), (-taxes).max(Decimal::ZERO), memo));
                }
                lines.push(line("accounts_receivable", (-receivable).max(Decimal::ZERO), receivable.max(Decimal::ZERO), memo));
            }
        }
        "recognized" if entry.amount >= Decimal::ZERO => {
            lines.extend(pair("deferred_revenue", "revenue", entry.amount, &format!("Revenue recognized for {month}")))
        }
        "recognized" => lines.extend(pair("contra_revenue", "deferred_revenue", -entry.amount, &format!("Revenue lowered for {month}"))),
        "reversed" => lines.extend(pair("contra_revenue", "deferred_revenue", -entry.amount, &entry.memo)),
        _ => {}
    }
    lines.retain(|l| !(l.debit.0.is_zero() && l.credit.0.is_zero()));
    lines
}

/// `GET /v1/admin/revenue/journal?month=2027-03&tenant=` (admin): the month's double-entry
/// journal: invoices (`accounts_receivable` against `deferred_revenue` and `tax_payable`),
/// recognition (`deferred_revenue` to `revenue`; a negative line to `contra_revenue`), credit notes
/// and voids (the other way; what they take back of revenue already recognized to
/// `contra_revenue`). Debits equal credits for every invoice and every month. With `Accept:
/// text/csv` the same lines as CSV (`date,account,debit,credit,invoice_id,tenant_id,memo`).
#[utoipa::path(
    get,
    path = "/v1/admin/revenue/journal",
    tag = "revenue",
    params(JournalQuery),
    responses(
        (status = 200, description = "The journal", body = JournalView, content_type = "application/json"),
        (status = 200, description = "The same lines as CSV", body = String, content_type = "text/csv"),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid,
        crate::openapi::Forbidden,
        crate::openapi::NotFound,
    ),
)]
async fn journal(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> Result<Response, ApiError> {
    let m = month(&q.month, "month")?;
    let tenant = match q.tenant.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(reference) => Some(state.resolve_tenant(reference).await?),
        None => None,
    };
    let entries = state.reads().revenue().entries(m, tenant).await?;
    let lines: Vec<JournalLine> = entries.iter().flat_map(|e| journal_lines(e, m)).collect();
    let csv =
        headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/csv")));
    if csv {
        let mut body = String::from("date,account,debit,credit,invoice_id,tenant_id,memo\r\n");
        for l in &lines {
            body.push_str(&format!(
                "{},{},{},{},{},{},{}\r\n",
                l.date,
                l.account,
                domain::billing::money::format(l.debit.0),
                domain::billing::money::format(l.credit.0),
                l.invoice_id,
                l.tenant_id,
                csv_field(&l.memo)
            ));
        }
        let disposition = format!("attachment; filename=\"journal-{m}.csv\"");
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
            body,
        )
            .into_response());
    }
    let total_debit: Decimal = lines.iter().map(|l| l.debit.0).sum();
    let total_credit: Decimal = lines.iter().map(|l| l.credit.0).sum();
    Ok(Json(JournalView { month: m.to_string(), lines, total_debit: total_debit.into(), total_credit: total_credit.into() })
        .into_response())
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so that a spreadsheet never runs it as a formula.
pub(crate) fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(report, close, reopen, invoice, journal), components(schemas(CloseBody, ReopenBody)))]
pub struct Docs;
