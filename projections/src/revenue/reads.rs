//! Reads of the `revenue` projection: the month table, an invoice's schedule, the journal, the
//! closes.

use chrono::{DateTime, NaiveDate, Utc};
use domain::billing::revenue_recognition::{InvoiceRevenue, Month};
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{day, month};
use crate::reads::ReadModels;

/// Reads of the books.
#[derive(Debug, Clone, Copy)]
pub struct RevenueReads<'a>(&'a PgPool);

impl ReadModels {
    /// The books: recognized revenue, schedules, the journal.
    pub fn revenue(&self) -> RevenueReads<'_> {
        RevenueReads(self.pool())
    }
}

/// One month of the books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthFigures {
    /// The month.
    pub month: Month,
    /// Subtotals of the invoices issued in it, net of the credit notes and voids booked in it.
    pub billed: Decimal,
    /// Revenue recognized in it.
    pub recognized: Decimal,
    /// Deferred revenue at its start.
    pub deferred_opening: Decimal,
    /// `deferred_opening + billed − recognized`.
    pub deferred_closing: Decimal,
    /// Whether it is closed.
    pub closed: bool,
}

/// An invoice's revenue as booked.
#[derive(Debug, Clone)]
pub struct InvoiceSchedule {
    /// Whose.
    pub tenant_id: Uuid,
    /// Its number.
    pub number: String,
    /// Whether it was voided.
    pub voided: bool,
    /// Its lines and their parts.
    pub revenue: InvoiceRevenue,
}

/// One entry of the books (a journal line is made of these).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EntryRow {
    /// `issued`, `credited`, `recognized` or `reversed`.
    pub kind: String,
    /// Whose.
    pub tenant_id: Uuid,
    /// Which invoice.
    pub invoice_id: Uuid,
    /// Booked on.
    pub date: NaiveDate,
    /// Revenue side: a subtotal (`issued`, negative `credited`) or revenue (`recognized`, `reversed`).
    pub amount: Decimal,
    /// Tax (`issued`, `credited`).
    pub tax: Decimal,
    /// For people.
    pub memo: String,
}

/// A close or reopen.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CloseRow {
    /// The log position of the event.
    pub position: i64,
    /// The month (its first day).
    pub month: NaiveDate,
    /// `closed` or `reopened`.
    pub action: String,
    /// Why (reopen).
    pub reason: Option<String>,
    /// Who.
    pub actor: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl RevenueReads<'_> {
    /// The first month the books hold anything in.
    pub async fn first_month(&self) -> Result<Option<Month>, sqlx::Error> {
        let first: Option<NaiveDate> = sqlx::query_scalar("SELECT min(month) FROM rm.revenue_entries").fetch_one(self.0).await?;
        Ok(first.map(month))
    }

    /// The last month anything is booked in.
    pub async fn last_month(&self) -> Result<Option<Month>, sqlx::Error> {
        let last: Option<NaiveDate> = sqlx::query_scalar("SELECT max(month) FROM rm.revenue_entries").fetch_one(self.0).await?;
        Ok(last.map(month))
    }

    /// The latest closed month.
    pub async fn closed_through(&self) -> Result<Option<Month>, sqlx::Error> {
        let through: Option<NaiveDate> =
            sqlx::query_scalar("SELECT closed_through FROM rm.revenue_books").fetch_optional(self.0).await?.flatten();
        Ok(through.map(month))
    }

    /// The months `from..=to` (of one tenant, or all), each with its deferred revenue at start
    /// and end.
    pub async fn months(&self, from: Month, to: Month, tenant: Option<Uuid>) -> Result<Vec<MonthFigures>, sqlx::Error> {
        let rows: Vec<(NaiveDate, Decimal, Decimal)> = sqlx::query_as(
            "SELECT month,
                    coalesce(sum(amount) FILTER (WHERE kind IN ('issued', 'credited')), 0),
                    coalesce(sum(amount) FILTER (WHERE kind IN ('recognized', 'reversed')), 0)
             FROM rm.revenue_entries
             WHERE month <= $1 AND ($2::uuid IS NULL OR tenant_id = $2)
             GROUP BY month ORDER BY month",
        )
        .bind(day(to))
        .bind(tenant)
        .fetch_all(self.0)
        .await?;
        let closed = self.closed_through().await?;
        let mut deferred = Decimal::ZERO;
        let mut rows = rows.into_iter().map(|(d, b, r)| (month(d), b, r)).peekable();
        while let Some((_, billed, recognized)) = rows.next_if(|(m, _, _)| *m < from) {
            deferred += billed - recognized;
        }
        let mut months = Vec::new();
        let mut m = from;
        while m <= to {
            let (billed, recognized) = match rows.next_if(|(month, _, _)| *month == m) {
                Some((_, b, r)) => (b, r),
                None => (Decimal::ZERO, Decimal::ZERO),
            };
            let opening = deferred;
            deferred += billed - recognized;
            months.push(MonthFigures {
                month: m,
                billed,
                recognized,
                deferred_opening: opening,
                deferred_closing: deferred,
                closed: closed.is_some_and(|c| m <= c),
            });
            m = m.next();
        }
        Ok(months)
    }

    /// An invoice's schedule.
    pub async fn invoice(&self, id: Uuid) -> Result<Option<InvoiceSchedule>, sqlx::Error> {
        let row: Option<(Uuid, String, bool, Json<InvoiceRevenue>)> =
            sqlx::query_as("SELECT tenant_id, number, voided, revenue FROM rm.revenue_invoices WHERE invoice_id = $1")
                .bind(id)
                .fetch_optional(self.0)
                .await?;
        Ok(row.map(|(tenant_id, number, voided, Json(revenue))| InvoiceSchedule { tenant_id, number, voided, revenue }))
    }

    /// What was booked in `month` (of one tenant, or all), per invoice and kind, in the order
    /// it was booked.
    pub async fn entries(&self, month: Month, tenant: Option<Uuid>) -> Result<Vec<EntryRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT kind, tenant_id, invoice_id, min(date) AS date, sum(amount) AS amount, sum(tax) AS tax, min(memo) AS memo
             FROM rm.revenue_entries
             WHERE month = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
             GROUP BY kind, tenant_id, invoice_id, CASE WHEN kind IN ('recognized') THEN 0 ELSE position END
             ORDER BY min(position), min(item)",
        )
        .bind(day(month))
        .bind(tenant)
        .fetch_all(self.0)
        .await
    }

    /// The closes and reopens, latest first.
    pub async fn closes(&self, limit: i64) -> Result<Vec<CloseRow>, sqlx::Error> {
        sqlx::query_as("SELECT position, month, action, reason, actor, at FROM rm.revenue_closes ORDER BY position DESC LIMIT $1")
            .bind(limit)
            .fetch_all(self.0)
            .await
    }
}
