//! Reads of the `billing` projection's tables: `rm.subscriptions` (each with its state as the
//! aggregate last had it), `rm.invoices`, `rm.credit_notes` and `rm.credit_transactions`.

use chrono::{DateTime, Utc};
use domain::billing::invoice::InvoiceLine;
use domain::subscription::Subscription;
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::reads::ReadModels;

/// Reads of subscriptions, invoices, credit notes and the credit ledger.
#[derive(Debug, Clone, Copy)]
pub struct BillingReads<'a>(&'a PgPool);

impl ReadModels {
    /// Subscriptions, invoices, credit notes and the credit ledger.
    pub fn billing(&self) -> BillingReads<'_> {
        BillingReads(self.pool())
    }
}

/// An invoice as the read model has it, with its credit notes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvoiceRow {
    pub id: Uuid,
    pub number: String,
    pub tenant_id: Uuid,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub currency: String,
    pub status: String,
    pub lines: Json<Vec<InvoiceLine>>,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub credit_applied: Decimal,
    pub amount_due: Decimal,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub payment_failed_at: Option<DateTime<Utc>>,
    pub credit_notes: Json<Vec<CreditNoteRow>>,
}

/// A credit note against an invoice.
#[derive(Debug, Clone, serde::Deserialize, sqlx::FromRow)]
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

/// What a payment or a void needs to know of an invoice.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InvoiceOwner {
    pub subscription_id: Uuid,
    pub tenant_id: Uuid,
    pub status: String,
    pub amount_due: Decimal,
    pub currency: String,
    pub issued_at: DateTime<Utc>,
}

/// Which invoices a list shows.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    /// One tenant's only.
    pub tenant_id: Option<Uuid>,
    /// Only in this status.
    pub status: Option<String>,
    /// Issued at or after.
    pub from: Option<DateTime<Utc>>,
    /// Issued before.
    pub to: Option<DateTime<Utc>>,
}

/// A change of a tenant's credit balance.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CreditTransactionRow {
    pub amount: Decimal,
    pub reason: String,
    pub invoice_id: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A subscription past due, for the console's overview.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PastDueRow {
    pub tenant_id: Uuid,
    pub code: String,
    pub current_period_end: Option<DateTime<Utc>>,
}

const INVOICE_COLUMNS: &str = "id, number, tenant_id, period_start, period_end, currency, status, lines, subtotal, tax, total,
     credit_applied, amount_due, issued_at, due_at, paid_at, payment_failed_at,
     (SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'number', c.number, 'invoice_id', c.invoice_id,
                 'subtotal', to_char(c.subtotal, 'FM9999999999990.00'), 'tax', to_char(c.tax, 'FM9999999999990.00'),
                 'total', to_char(c.total, 'FM9999999999990.00'), 'reason', c.reason,
                 'created_at', to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
                 ORDER BY c.number), '[]'::jsonb)
      FROM rm.credit_notes c WHERE c.invoice_id = rm.invoices.id) AS credit_notes";

impl BillingReads<'_> {
    /// Tenant `tenant_id`'s subscription: its id and state.
    pub async fn subscription_of(&self, tenant_id: Uuid) -> Result<Option<(Uuid, Subscription)>, sqlx::Error> {
        let row: Option<(Uuid, Json<Subscription>)> =
            sqlx::query_as("SELECT id, state FROM rm.subscriptions WHERE tenant_id = $1").bind(tenant_id).fetch_optional(self.0).await?;
        Ok(row.map(|(id, s)| (id, s.0)))
    }

    /// The id of tenant `tenant_id`'s subscription.
    pub async fn subscription_id_of(&self, tenant_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM rm.subscriptions WHERE tenant_id = $1").bind(tenant_id).fetch_optional(self.0).await
    }

    /// When tenant `tenant_id`'s subscription was cancelled: `None` if it has none, `Some(None)`
    /// if it is not cancelled.
    pub async fn cancelled_at(&self, tenant_id: Uuid) -> Result<Option<Option<DateTime<Utc>>>, sqlx::Error> {
        sqlx::query_scalar("SELECT cancelled_at FROM rm.subscriptions WHERE tenant_id = $1").bind(tenant_id).fetch_optional(self.0).await
    }

    /// The metrics the charges of tenant `tenant_id`'s plan name.
    pub async fn charged_metrics(&self, tenant_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
        let metrics: Option<Json<Vec<String>>> = sqlx::query_scalar(
            "SELECT jsonb_path_query_array(state, '$.plan.charges[*].metric') FROM rm.subscriptions WHERE tenant_id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(self.0)
        .await?;
        Ok(metrics.map(|m| m.0).unwrap_or_default())
    }

    /// Invoice `id`, if it is tenant `scope`'s (any tenant's when `None`).
    pub async fn invoice(&self, id: Uuid, scope: Option<Uuid>) -> Result<Option<InvoiceRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {INVOICE_COLUMNS} FROM rm.invoices WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"))
            .bind(id)
            .bind(scope)
            .fetch_optional(self.0)
            .await
    }

    /// Up to `limit` invoices issued before `before` (an instant and an id), newest first.
    pub async fn invoices(
        &self,
        filter: InvoiceFilter,
        before: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<InvoiceRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {INVOICE_COLUMNS} FROM rm.invoices
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::timestamptz IS NULL OR issued_at >= $3) AND ($4::timestamptz IS NULL OR issued_at < $4)
               AND ($5::timestamptz IS NULL OR (issued_at, id) < ($5, $6))
             ORDER BY issued_at DESC, id DESC LIMIT $7"
        ))
        .bind(filter.tenant_id)
        .bind(filter.status)
        .bind(filter.from)
        .bind(filter.to)
        .bind(before.map(|c| c.0))
        .bind(before.map(|c| c.1))
        .bind(limit)
        .fetch_all(self.0)
        .await
    }

    /// Whose invoice `id` is, and what a payment needs of it.
    pub async fn invoice_owner(&self, id: Uuid) -> Result<Option<InvoiceOwner>, sqlx::Error> {
        sqlx::query_as("SELECT subscription_id, tenant_id, status, amount_due, currency, issued_at FROM rm.invoices WHERE id = $1")
            .bind(id)
            .fetch_optional(self.0)
            .await
    }

    /// Every change of tenant `tenant_id`'s credit balance, oldest first.
    pub async fn credit_transactions(&self, tenant_id: Uuid) -> Result<Vec<CreditTransactionRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT amount, reason, invoice_id, expires_at, created_at FROM rm.credit_transactions WHERE tenant_id = $1 ORDER BY position",
        )
        .bind(tenant_id)
        .fetch_all(self.0)
        .await
    }

    /// Up to 100 subscriptions past due, by tenant code.
    pub async fn past_due(&self) -> Result<Vec<PastDueRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT t.id AS tenant_id, t.code, s.current_period_end FROM rm.subscriptions s JOIN rm.tenants t ON t.id = s.tenant_id
             WHERE s.status = 'past_due' ORDER BY t.code LIMIT 100",
        )
        .fetch_all(self.0)
        .await
    }

    /// The platform's revenue per month (UTC) from the month of `from` to before `to`
    /// (`analytics.revenue_monthly`).
    pub async fn revenue_monthly(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<RevenueMonthRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT month, mrr, arr, active_tenants, new_tenants, churned_tenants, active_at_start, by_plan FROM analytics.revenue_monthly
             WHERE ($1::timestamptz IS NULL OR month >= date_trunc('month', $1 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AND ($2::timestamptz IS NULL OR month < $2)
             ORDER BY month",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.0)
        .await
    }
}

/// A month of `analytics.revenue_monthly`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevenueMonthRow {
    pub month: DateTime<Utc>,
    pub mrr: Decimal,
    pub arr: Decimal,
    pub active_tenants: i64,
    pub new_tenants: i64,
    pub churned_tenants: i64,
    pub active_at_start: i64,
    /// MRR by plan code, amounts as text.
    pub by_plan: Json<serde_json::Map<String, serde_json::Value>>,
}
