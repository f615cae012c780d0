//! The `revenue` projection: the platform's books, straight from the log (the rule is
//! `domain::billing::revenue_recognition`).
//!
//! Tables: `revenue_invoices` (each invoice's parts and their schedules as booked, so that a
//! credit note or a void later knows what was recognized in which month), `revenue_entries` (what
//! each event books in which month: `issued` and `credited` are billed, `recognized` and
//! `reversed` are revenue; the report and the journal are sums of them), `revenue_consumption`
//! (usage per tenant, metric and hour, for usage lines recognized as consumed), `revenue_closes`
//! (closes and reopens with actor and reason) and `revenue_books` (the latest closed month).
//!
//! Everything is decided in log order: an invoice sees the usage recorded before it, a close
//! freezes the months before it, whatever would land in a closed month afterwards is booked in
//! the first open month (catch-up). So a rebuild gives the same books.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use domain::billing::period::Period;
use domain::billing::revenue_recognition::{InvoiceRevenue, Issued, Month, Schedule, Weights};
use domain::books::BooksEvent;
use domain::subscription::SubscriptionEvent;
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;

/// The first day of `month`, as the tables keep months.
pub(crate) fn day(month: Month) -> NaiveDate {
    month.start().date_naive()
}

/// The month a table's first day stands for.
pub(crate) fn month(day: NaiveDate) -> Month {
    Month::of(day.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

/// Builds the books.
#[derive(Debug, Clone, Copy)]
pub struct RevenueProjection;

/// The events the projection reads through Rust (usage is folded in SQL).
const EVENT_TYPES: &[&str] = &["InvoiceIssued", "CreditNoteIssued", "InvoiceVoided", "MonthClosed", "MonthReopened"];

#[async_trait]
impl Projection for RevenueProjection {
    fn name(&self) -> &'static str {
        "revenue"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Subscription", "Books", "Usage", "UsageBatch"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["revenue_invoices", "revenue_entries", "revenue_consumption", "revenue_closes", "revenue_books"]
    }

    /// `analytics.revenue_recognized`: per month (and tenant), what was billed and recognized.
    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        vec![(
            "revenue_recognized",
            "SELECT month, tenant_id,
                    coalesce(sum(amount) FILTER (WHERE kind IN ('issued', 'credited')), 0) AS billed,
                    coalesce(sum(amount) FILTER (WHERE kind IN ('recognized', 'reversed')), 0) AS recognized,
                    coalesce(sum(amount) FILTER (WHERE kind IN ('issued', 'credited')), 0)
                      - coalesce(sum(amount) FILTER (WHERE kind IN ('recognized', 'reversed')), 0) AS deferred_change
             FROM {schema}.revenue_entries
             GROUP BY month, tenant_id"
                .to_owned(),
        )]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.revenue_invoices (
                 invoice_id uuid PRIMARY KEY,
                 tenant_id  uuid NOT NULL,
                 number     text NOT NULL,
                 issued_at  timestamptz NOT NULL,
                 subtotal   numeric NOT NULL,
                 tax        numeric NOT NULL,
                 credited_tax numeric NOT NULL,
                 voided     boolean NOT NULL,
                 revenue    jsonb NOT NULL
             );
             CREATE TABLE {schema}.revenue_entries (
                 position   bigint NOT NULL,
                 item       integer NOT NULL,
                 month      date NOT NULL,
                 tenant_id  uuid NOT NULL,
                 invoice_id uuid NOT NULL,
                 kind       text NOT NULL,
                 amount     numeric NOT NULL,
                 tax        numeric NOT NULL,
                 date       date NOT NULL,
                 memo       text NOT NULL,
                 PRIMARY KEY (position, item)
             );
             CREATE INDEX ON {schema}.revenue_entries (month);
             CREATE INDEX ON {schema}.revenue_entries (tenant_id, month);
             CREATE TABLE {schema}.revenue_consumption (
                 tenant_id uuid NOT NULL,
                 metric    text NOT NULL,
                 hour      timestamptz NOT NULL,
                 quantity  numeric NOT NULL,
                 PRIMARY KEY (tenant_id, metric, hour)
             );
             CREATE TABLE {schema}.revenue_closes (
                 position bigint PRIMARY KEY,
                 month    date NOT NULL,
                 action   text NOT NULL,
                 reason   text,
                 actor    text,
                 at       timestamptz NOT NULL
             );
             CREATE TABLE {schema}.revenue_books (
                 id             boolean PRIMARY KEY DEFAULT true,
                 closed_from    date,
                 closed_through date
             );
             INSERT INTO {schema}.revenue_books (closed_from, closed_through) VALUES (NULL, NULL);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        apply_span(conn, schema, event.position - 1, event.position).await
    }

    /// The invoices, credit notes, voids and closes of the range read through Rust, in order;
    /// the usage between them folded into hourly consumption in SQL, each stretch before the
    /// invoice after it (an invoice sees the usage recorded before it, as one-by-one application
    /// would).
    async fn apply_range(
        &self,
        conn: &mut PgConnection,
        schema: &str,
        after: i64,
        upto: i64,
        _log: &PgPool,
    ) -> Result<(), ProjectionError> {
        apply_span(conn, schema, after, upto).await
    }
}

/// Applies the events at positions `after < position <= upto`.
async fn apply_span(conn: &mut PgConnection, schema: &str, after: i64, upto: i64) -> Result<(), ProjectionError> {
    let events: Vec<StoredEvent> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE position > $1 AND position <= $2 AND (aggregate_type IN ('Subscription', 'Books')) IS TRUE AND event_type = ANY($3)
         ORDER BY position",
        COLUMNS = crate::log::COLUMNS
    ))
    .bind(after)
    .bind(upto)
    .bind(EVENT_TYPES)
    .fetch_all(&mut *conn)
    .await?;
    let events: Vec<StoredEvent> = events.into_iter().map(StoredEvent::into_upcast).collect();
    let mut books = Books::load(conn, schema).await?;
    let mut consumed_upto = after;
    for event in &events {
        let needs_usage = event.event_type == "InvoiceIssued"
            && event
                .payload
                .get("lines")
                .and_then(|l| l.as_array())
                .is_some_and(|lines| lines.iter().any(|l| matches!(l.get("kind").and_then(|k| k.as_str()), Some("usage" | "overage"))));
        if needs_usage {
            fold_consumption(conn, schema, consumed_upto, event.position - 1).await?;
            consumed_upto = event.position - 1;
        }
        books.apply(conn, schema, event).await?;
    }
    books.flush(conn, schema).await?;
    fold_consumption(conn, schema, consumed_upto, upto).await?;
    Ok(())
}

/// Folds the usage facts at positions `after < position <= upto` into hourly consumption.
async fn fold_consumption(conn: &mut PgConnection, schema: &str, after: i64, upto: i64) -> Result<(), sqlx::Error> {
    if upto <= after {
        return Ok(());
    }
    sqlx::query(&format!(
        "WITH f AS (
             SELECT (payload->>'tenant_id')::uuid AS tenant_id, payload->>'metric' AS metric,
                    (payload->>'quantity')::numeric AS quantity, (payload->>'occurred_at')::timestamptz AS occurred_at
             FROM events
             WHERE position > $1 AND position <= $2 AND (aggregate_type = 'Usage') IS TRUE AND event_type = 'UsageRecorded'
             UNION ALL
             SELECT b.tenant_id, x.f->>'metric', (x.f->>'quantity')::numeric, (x.f->>'occurred_at')::timestamptz
             FROM (SELECT (payload->>'tenant_id')::uuid AS tenant_id, payload->'facts' AS facts
                   FROM events
                   WHERE position > $1 AND position <= $2 AND (aggregate_type = 'UsageBatch') IS TRUE
                   OFFSET 0) AS b
             CROSS JOIN LATERAL jsonb_array_elements(b.facts) AS x(f)
         )
         INSERT INTO {schema}.revenue_consumption AS c (tenant_id, metric, hour, quantity)
         SELECT tenant_id, metric, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', sum(quantity)
         FROM f GROUP BY 1, 2, 3
         ON CONFLICT (tenant_id, metric, hour) DO UPDATE SET quantity = c.quantity + EXCLUDED.quantity"
    ))
    .bind(after)
    .bind(upto)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// An invoice as the projection keeps it.
#[derive(Debug, Clone)]
struct Invoice {
    tenant_id: Uuid,
    number: String,
    issued_at: DateTime<Utc>,
    subtotal: Decimal,
    tax: Decimal,
    credited_tax: Decimal,
    voided: bool,
    revenue: InvoiceRevenue,
}

/// One row of `revenue_entries`.
struct Entry {
    position: i64,
    item: i32,
    month: Month,
    tenant_id: Uuid,
    invoice_id: Uuid,
    kind: &'static str,
    amount: Decimal,
    tax: Decimal,
    date: NaiveDate,
    memo: String,
}

/// A close or reopen to record: `(position, month, action, reason, actor, at)`.
type Close = (i64, Month, &'static str, Option<String>, Option<String>, DateTime<Utc>);

/// The batch's view of the books: the latest closed month, the invoices it touched, and the
/// rows it is about to write.
struct Books {
    closed_from: Option<Month>,
    closed_through: Option<Month>,
    closed_changed: bool,
    invoices: HashMap<Uuid, Invoice>,
    changed: Vec<Uuid>,
    entries: Vec<Entry>,
    closes: Vec<Close>,
}

impl Books {
    async fn load(conn: &mut PgConnection, schema: &str) -> Result<Self, sqlx::Error> {
        let (from, through): (Option<NaiveDate>, Option<NaiveDate>) =
            sqlx::query_as(&format!("SELECT closed_from, closed_through FROM {schema}.revenue_books")).fetch_one(&mut *conn).await?;
        Ok(Self {
            closed_from: from.map(month),
            closed_through: through.map(month),
            closed_changed: false,
            invoices: HashMap::new(),
            changed: Vec::new(),
            entries: Vec::new(),
            closes: Vec::new(),
        })
    }

    /// The first open month, if any month is closed.
    fn first_open(&self) -> Option<Month> {
        self.closed_through.map(Month::next)
    }

    /// Where something of `month` is booked: itself, or the first open month if it is closed.
    fn booked(&self, month: Month) -> Month {
        self.first_open().map_or(month, |open| month.max(open))
    }

    async fn invoice(&mut self, conn: &mut PgConnection, schema: &str, id: Uuid) -> Result<Option<&mut Invoice>, sqlx::Error> {
        if let Slot::Vacant(slot) = self.invoices.entry(id) {
            type Row = (Uuid, String, DateTime<Utc>, Decimal, Decimal, Decimal, bool, Json<InvoiceRevenue>);
            let row: Option<Row> = sqlx::query_as(&format!(
                "SELECT tenant_id, number, issued_at, subtotal, tax, credited_tax, voided, revenue FROM {schema}.revenue_invoices WHERE invoice_id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((tenant_id, number, issued_at, subtotal, tax, credited_tax, voided, Json(revenue))) = row else { return Ok(None) };
            slot.insert(Invoice { tenant_id, number, issued_at, subtotal, tax, credited_tax, voided, revenue });
        }
        Ok(self.invoices.get_mut(&id))
    }

    async fn apply(&mut self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        let position = event.position;
        if event.aggregate_type == "Books" {
            let books_event: BooksEvent =
                serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
            let actor = event.metadata.get("actor").and_then(|a| a.as_str()).map(str::to_owned);
            match books_event {
                BooksEvent::MonthClosed { month, at } => {
                    self.closed_from = self.closed_from.or(Some(month));
                    self.closed_through = Some(month);
                    self.closes.push((position, month, "closed", None, actor, at));
                }
                BooksEvent::MonthReopened { month, reason, at } => {
                    if self.closed_through == Some(month) {
                        // Reopening the only closed month leaves nothing closed.
                        if self.closed_from == Some(month) {
                            (self.closed_from, self.closed_through) = (None, None);
                        } else {
                            self.closed_through = Some(month.prev());
                        }
                    }
                    self.closes.push((position, month, "reopened", Some(reason), actor, at));
                }
            }
            self.closed_changed = true;
            return Ok(());
        }
        let subscription_event: SubscriptionEvent =
            serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        match subscription_event {
            SubscriptionEvent::InvoiceIssued { invoice_id, number, period_start, period_end, lines, subtotal, tax, issued_at, .. } => {
                let Some(tenant_id) = event.tenant_id else {
                    return Err(ProjectionError::payload(event, serde::de::Error::custom("an invoice without a tenant")));
                };
                // Usage consumed per month of a period, from the hourly consumption so far.
                let mut usage: HashMap<(String, Period), Weights> = HashMap::new();
                for line in &lines {
                    if let (Some(metric), Some(period)) = (&line.metric, line.period) {
                        if let Slot::Vacant(slot) = usage.entry((metric.clone(), period)) {
                            let rows: Vec<(NaiveDate, Decimal)> = sqlx::query_as(&format!(
                                "SELECT (date_trunc('month', hour AT TIME ZONE 'UTC'))::date, sum(quantity)
                                 FROM {schema}.revenue_consumption
                                 WHERE tenant_id = $1 AND metric = $2 AND hour >= date_trunc('hour', $3 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND hour < $4
                                 GROUP BY 1 ORDER BY 1"
                            ))
                            .bind(tenant_id)
                            .bind(metric)
                            .bind(period.start)
                            .bind(period.end)
                            .fetch_all(&mut *conn)
                            .await?;
                            slot.insert(rows.into_iter().map(|(d, q)| (month(d), q)).collect());
                        }
                    }
                }
                let consumed = |metric: &str, period: Period| usage.get(&(metric.to_owned(), period)).cloned().unwrap_or_default();
                let mut revenue = InvoiceRevenue::recognize(
                    Issued { lines: &lines, period: Period { start: period_start, end: period_end }, issued_at },
                    &consumed,
                );
                revenue.catch_up(self.first_open());
                let issued_month = self.booked(Month::of(issued_at));
                self.entries.push(Entry {
                    position,
                    item: 0,
                    month: issued_month,
                    tenant_id,
                    invoice_id,
                    kind: "issued",
                    amount: subtotal,
                    tax,
                    date: entry_date(issued_at, issued_month),
                    memo: format!("Invoice {number} issued"),
                });
                for (item, (month, amount)) in (1..).zip(revenue.schedule()) {
                    self.entries.push(Entry {
                        position,
                        item,
                        month,
                        tenant_id,
                        invoice_id,
                        kind: "recognized",
                        amount,
                        tax: Decimal::ZERO,
                        date: last_day(month),
                        memo: format!("Invoice {number}: revenue recognized for {month}"),
                    });
                }
                self.invoices.insert(
                    invoice_id,
                    Invoice { tenant_id, number, issued_at, subtotal, tax, credited_tax: Decimal::ZERO, voided: false, revenue },
                );
                self.changed.push(invoice_id);
            }
            SubscriptionEvent::CreditNoteIssued { invoice_id, number, subtotal, tax, created_at, .. } => {
                let memo = format!("Credit note {number}");
                self.credit(conn, schema, event, invoice_id, subtotal, tax, created_at, memo).await?;
            }
            SubscriptionEvent::InvoiceVoided { invoice_id, voided_at } => {
                let Some(invoice) = self.invoice(conn, schema, invoice_id).await? else { return Ok(()) };
                let subtotal = invoice.revenue.billed() - invoice.revenue.credited();
                let tax = invoice.tax - invoice.credited_tax;
                invoice.voided = true;
                let memo = format!("Invoice {} voided", invoice.number);
                self.credit(conn, schema, event, invoice_id, subtotal, tax, voided_at, memo).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A credit of `subtotal` (and `tax`) against `invoice_id` at `at`.
    #[allow(clippy::too_many_arguments)]
    async fn credit(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        event: &StoredEvent,
        invoice_id: Uuid,
        subtotal: Decimal,
        tax: Decimal,
        at: DateTime<Utc>,
        memo: String,
    ) -> Result<(), ProjectionError> {
        let month = self.booked(Month::of(at));
        let Some(invoice) = self.invoice(conn, schema, invoice_id).await? else {
            // An invoice issued before the books existed cannot be: the log holds it. A credit
            // against an invoice the log does not hold is a corrupt log.
            return Err(ProjectionError::payload(event, serde::de::Error::custom("a credit against an unknown invoice")));
        };
        let tenant_id = invoice.tenant_id;
        invoice.credited_tax += tax;
        let effect = invoice.revenue.credit(subtotal, month);
        // Months the credit lowers that are closed: booked in the first open month instead.
        let mut lowered = Schedule::new();
        for (m, amount) in &effect.lowered {
            *lowered.entry(self.booked(*m)).or_default() += *amount;
        }
        let mut item = 0;
        let mut entries = vec![Entry {
            position: event.position,
            item,
            month,
            tenant_id,
            invoice_id,
            kind: "credited",
            amount: -subtotal,
            tax: -tax,
            date: entry_date(at, month),
            memo: memo.clone(),
        }];
        if !effect.reversed.is_zero() {
            item += 1;
            entries.push(Entry {
                position: event.position,
                item,
                month,
                tenant_id,
                invoice_id,
                kind: "reversed",
                amount: -effect.reversed,
                tax: Decimal::ZERO,
                date: entry_date(at, month),
                memo: format!("{memo}: revenue recognized before {month} reversed"),
            });
        }
        for (m, amount) in lowered {
            item += 1;
            entries.push(Entry {
                position: event.position,
                item,
                month: m,
                tenant_id,
                invoice_id,
                kind: "recognized",
                amount: -amount,
                tax: Decimal::ZERO,
                date: last_day(m),
                memo: format!("{memo}: revenue for {m} lowered"),
            });
        }
        self.entries.extend(entries);
        self.changed.push(invoice_id);
        Ok(())
    }

    /// Writes what the batch gathered so far.
    async fn flush(&mut self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        self.changed.sort_unstable();
        self.changed.dedup();
        if !self.changed.is_empty() {
            let invoices: Vec<&Invoice> = self.changed.iter().map(|id| &self.invoices[id]).collect();
            let revenue: Vec<serde_json::Value> =
                invoices.iter().map(|i| serde_json::to_value(&i.revenue).expect("serializable")).collect();
            sqlx::query(&format!(
                "INSERT INTO {schema}.revenue_invoices AS i (invoice_id, tenant_id, number, issued_at, subtotal, tax, credited_tax, voided, revenue)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::numeric[], $6::numeric[], $7::numeric[], $8::boolean[], $9::jsonb[])
                 ON CONFLICT (invoice_id) DO UPDATE SET credited_tax = EXCLUDED.credited_tax, voided = EXCLUDED.voided, revenue = EXCLUDED.revenue"
            ))
            .bind(&self.changed)
            .bind(invoices.iter().map(|i| i.tenant_id).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.number.clone()).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.issued_at).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.subtotal).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.tax).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.credited_tax).collect::<Vec<_>>())
            .bind(invoices.iter().map(|i| i.voided).collect::<Vec<_>>())
            .bind(revenue)
            .execute(&mut *conn)
            .await?;
            self.changed.clear();
        }
        if !self.entries.is_empty() {
            let e = std::mem::take(&mut self.entries);
            sqlx::query(&format!(
                "INSERT INTO {schema}.revenue_entries (position, item, month, tenant_id, invoice_id, kind, amount, tax, date, memo)
                 SELECT * FROM unnest($1::bigint[], $2::integer[], $3::date[], $4::uuid[], $5::uuid[], $6::text[], $7::numeric[], $8::numeric[], $9::date[], $10::text[])"
            ))
            .bind(e.iter().map(|e| e.position).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.item).collect::<Vec<_>>())
            .bind(e.iter().map(|e| day(e.month)).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.tenant_id).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.invoice_id).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.kind).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.amount).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.tax).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.date).collect::<Vec<_>>())
            .bind(e.iter().map(|e| e.memo.clone()).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.closes.is_empty() {
            for (position, month, action, reason, actor, at) in std::mem::take(&mut self.closes) {
                sqlx::query(&format!(
                    "INSERT INTO {schema}.revenue_closes (position, month, action, reason, actor, at) VALUES ($1, $2, $3, $4, $5, $6)"
                ))
                .bind(position)
                .bind(day(month))
                .bind(action)
                .bind(reason)
                .bind(actor)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
        }
        if self.closed_changed {
            sqlx::query(&format!("UPDATE {schema}.revenue_books SET closed_from = $1, closed_through = $2"))
                .bind(self.closed_from.map(day))
                .bind(self.closed_through.map(day))
                .execute(&mut *conn)
                .await?;
            self.closed_changed = false;
        }
        Ok(())
    }
}

/// The day something dated `at` is booked on: its own, or the first day of `month` when it was
/// caught up into a later month.
fn entry_date(at: DateTime<Utc>, month: Month) -> NaiveDate {
    if Month::of(at) == month {
        at.date_naive()
    } else {
        day(month)
    }
}

/// The last day of `month` (revenue is recognized at month end).
fn last_day(month: Month) -> NaiveDate {
    day(month.next()).pred_opt().expect("a day before")
}
