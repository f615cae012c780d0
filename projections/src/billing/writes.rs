//! What a batch of Subscription events writes, gathered and then written in a few statements:
//! every invoice the batch issues in one INSERT (changed in memory by the payments, voids,
//! failures and credit notes of the same batch), every credit entry in one, the revenue and
//! sign-up/cancellation rollups summed per key (one upsert each table), and every subscription
//! row in one upsert. A billing day's renewal is then a share of five statements instead of two
//! of its own. What must stay in order (changes to invoices of earlier batches, credit notes,
//! the spans each subscription opens and closes) is kept in order, a statement each: those are
//! not on the renewal path.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use domain::subscription::Subscription;
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

/// One `invoices` row.
pub(super) struct InvoiceRow {
    pub id: Uuid,
    pub number: String,
    pub tenant_id: Option<Uuid>,
    pub subscription_id: Uuid,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub currency: String,
    pub status: &'static str,
    pub lines: serde_json::Value,
    pub subtotal: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
    pub credit_applied: Decimal,
    pub amount_due: Decimal,
    pub issued_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub payment_failed_at: Option<DateTime<Utc>>,
}

/// A write that must happen in its place among the others of its kind.
pub(super) enum Ordered {
    CreditNote {
        id: Uuid,
        number: String,
        invoice_id: Uuid,
        tenant_id: Option<Uuid>,
        subtotal: Decimal,
        tax: Decimal,
        total: Decimal,
        reason: String,
        created_at: DateTime<Utc>,
    },
    /// What a credit note settles is no longer due; an invoice with nothing left due is paid.
    InvoiceCredited {
        invoice_id: Uuid,
        applied: Decimal,
        at: DateTime<Utc>,
    },
    InvoicePaid {
        invoice_id: Uuid,
        paid_at: DateTime<Utc>,
    },
    InvoiceVoided {
        invoice_id: Uuid,
    },
    InvoicePaymentFailed {
        invoice_id: Uuid,
        failed_at: DateTime<Utc>,
    },
    SpanClosed {
        subscription_id: Uuid,
        at: DateTime<Utc>,
    },
    SpanOpened {
        subscription_id: Uuid,
        tenant_id: Option<Uuid>,
        plan: String,
        period: &'static str,
        value: Decimal,
        at: DateTime<Utc>,
    },
}

/// One `credit_transactions` row: tenant, position key, amount, reason, invoice, expiry, when.
pub(super) type CreditRow = (Option<Uuid>, i64, Decimal, String, Option<Uuid>, Option<DateTime<Utc>>, DateTime<Utc>);

/// One `subscriptions` row: the state after the batch and the event it is as of.
pub(super) struct SubscriptionRow<'a> {
    pub id: Uuid,
    pub state: &'a Subscription,
    pub updated_at: DateTime<Utc>,
}

/// The writes of one batch.
#[derive(Default)]
pub(super) struct Writes {
    invoices: Vec<InvoiceRow>,
    /// Where each invoice issued in this batch is in `invoices`.
    issued: HashMap<Uuid, usize>,
    ordered: Vec<Ordered>,
    credit: Vec<CreditRow>,
    revenue: BTreeMap<(DateTime<Utc>, String), (Decimal, i64)>,
    counts: BTreeMap<DateTime<Utc>, (i64, i64)>,
}

impl Writes {
    pub fn issue(&mut self, invoice: InvoiceRow) {
        self.issued.insert(invoice.id, self.invoices.len());
        self.invoices.push(invoice);
    }

    /// The invoice `id` if this batch issued it.
    fn issued(&mut self, id: Uuid) -> Option<&mut InvoiceRow> {
        self.issued.get(&id).map(|&i| &mut self.invoices[i])
    }

    pub fn paid(&mut self, invoice_id: Uuid, paid_at: DateTime<Utc>) {
        match self.issued(invoice_id) {
            Some(invoice) => {
                invoice.status = "paid";
                invoice.paid_at = Some(paid_at);
                invoice.amount_due = Decimal::ZERO;
            }
            None => self.ordered.push(Ordered::InvoicePaid { invoice_id, paid_at }),
        }
    }

    pub fn voided(&mut self, invoice_id: Uuid) {
        match self.issued(invoice_id) {
            Some(invoice) => {
                invoice.status = "void";
                invoice.amount_due = Decimal::ZERO;
            }
            None => self.ordered.push(Ordered::InvoiceVoided { invoice_id }),
        }
    }

    pub fn payment_failed(&mut self, invoice_id: Uuid, failed_at: DateTime<Utc>) {
        match self.issued(invoice_id) {
            Some(invoice) => invoice.payment_failed_at = Some(failed_at),
            None => self.ordered.push(Ordered::InvoicePaymentFailed { invoice_id, failed_at }),
        }
    }

    pub fn credited(&mut self, invoice_id: Uuid, applied: Decimal, at: DateTime<Utc>) {
        match self.issued(invoice_id) {
            Some(invoice) => {
                let due = invoice.amount_due - applied;
                if invoice.status == "open" && due <= Decimal::ZERO {
                    invoice.status = "paid";
                    invoice.paid_at = Some(at);
                }
                invoice.amount_due = due;
            }
            None => self.ordered.push(Ordered::InvoiceCredited { invoice_id, applied, at }),
        }
    }

    pub fn ordered(&mut self, write: Ordered) {
        self.ordered.push(write);
    }

    pub fn credit(&mut self, entry: CreditRow) {
        self.credit.push(entry);
    }

    /// A change of `plan`'s MRR and paying count in `month`'s rollup.
    pub fn revenue(&mut self, month: DateTime<Utc>, plan: &str, mrr: Decimal, paying: i64) {
        let sum = self.revenue.entry((month, plan.to_owned())).or_insert((Decimal::ZERO, 0));
        sum.0 += mrr;
        sum.1 += paying;
    }

    /// A change of `month`'s count of sign-ups (`started`) or cancellations.
    pub fn count(&mut self, month: DateTime<Utc>, started: i64, cancelled: i64) {
        let sum = self.counts.entry(month).or_insert((0, 0));
        sum.0 += started;
        sum.1 += cancelled;
    }

    /// Writes it all, and `subscriptions`' rows.
    pub async fn write(self, conn: &mut PgConnection, schema: &str, subscriptions: &[SubscriptionRow<'_>]) -> Result<(), sqlx::Error> {
        if !self.invoices.is_empty() {
            let i = &self.invoices;
            sqlx::query(&format!(
                "INSERT INTO {schema}.invoices (id, number, tenant_id, subscription_id, period_start, period_end, currency, status, lines,
                         subtotal, tax, total, credit_applied, amount_due, issued_at, due_at, paid_at, payment_failed_at)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::timestamptz[], $7::text[],
                         $8::text[], $9::jsonb[], $10::numeric[], $11::numeric[], $12::numeric[], $13::numeric[], $14::numeric[],
                         $15::timestamptz[], $16::timestamptz[], $17::timestamptz[], $18::timestamptz[])"
            ))
            .bind(i.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.number.as_str()).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.subscription_id).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.period_start).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.period_end).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(i.iter().map(|r| Json(&r.lines)).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.subtotal).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.tax).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.total).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.credit_applied).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.amount_due).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.issued_at).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.due_at).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.paid_at).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.payment_failed_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        for write in self.ordered {
            ordered(conn, schema, write).await?;
        }
        if !self.credit.is_empty() {
            let c = &self.credit;
            sqlx::query(&format!(
                "INSERT INTO {schema}.credit_transactions
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::numeric[], $4::text[], $5::uuid[], $6::timestamptz[], $7::timestamptz[])"
            ))
            .bind(c.iter().map(|e| e.0).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.1).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.2).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.3.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.4).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.5).collect::<Vec<_>>())
            .bind(c.iter().map(|e| e.6).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.revenue.is_empty() {
            let r: Vec<_> = self.revenue.into_iter().collect();
            sqlx::query(&format!(
                "INSERT INTO {schema}.revenue_changes AS r SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::numeric[], $4::bigint[])
                 ON CONFLICT (month, plan) DO UPDATE SET mrr = r.mrr + EXCLUDED.mrr, paying = r.paying + EXCLUDED.paying"
            ))
            .bind(r.iter().map(|((month, _), _)| *month).collect::<Vec<_>>())
            .bind(r.iter().map(|((_, plan), _)| plan.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|(_, (mrr, _))| *mrr).collect::<Vec<_>>())
            .bind(r.iter().map(|(_, (_, paying))| *paying).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !self.counts.is_empty() {
            let c: Vec<_> = self.counts.into_iter().collect();
            sqlx::query(&format!(
                "INSERT INTO {schema}.subscription_changes AS c SELECT * FROM unnest($1::timestamptz[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (month) DO UPDATE SET started = c.started + EXCLUDED.started, cancelled = c.cancelled + EXCLUDED.cancelled"
            ))
            .bind(c.iter().map(|(month, _)| *month).collect::<Vec<_>>())
            .bind(c.iter().map(|(_, (started, _))| *started).collect::<Vec<_>>())
            .bind(c.iter().map(|(_, (_, cancelled))| *cancelled).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if !subscriptions.is_empty() {
            write_subscriptions(conn, schema, subscriptions).await?;
        }
        Ok(())
    }
}

async fn ordered(conn: &mut PgConnection, schema: &str, write: Ordered) -> Result<(), sqlx::Error> {
    let query = match write {
        Ordered::CreditNote { id, number, invoice_id, tenant_id, subtotal, tax, total, reason, created_at } => {
            return sqlx::query(&format!(
                "INSERT INTO {schema}.credit_notes (id, number, invoice_id, tenant_id, subtotal, tax, total, reason, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(id)
            .bind(number)
            .bind(invoice_id)
            .bind(tenant_id)
            .bind(subtotal)
            .bind(tax)
            .bind(total)
            .bind(reason)
            .bind(created_at)
            .execute(&mut *conn)
            .await
            .map(drop);
        }
        Ordered::InvoiceCredited { invoice_id, applied, at } => {
            sqlx::query(&format!(
                "UPDATE {schema}.invoices SET amount_due = amount_due - $2,
                     status = CASE WHEN status = 'open' AND amount_due - $2 <= 0 THEN 'paid' ELSE status END,
                     paid_at = CASE WHEN status = 'open' AND amount_due - $2 <= 0 THEN $3 ELSE paid_at END
                 WHERE id = $1"
            ))
            .bind(invoice_id)
            .bind(applied)
            .bind(at)
            .execute(&mut *conn)
            .await
        }
        Ordered::InvoicePaid { invoice_id, paid_at } => {
            sqlx::query(&format!("UPDATE {schema}.invoices SET status = 'paid', paid_at = $2, amount_due = 0 WHERE id = $1"))
                .bind(invoice_id)
                .bind(paid_at)
                .execute(&mut *conn)
                .await
        }
        Ordered::InvoiceVoided { invoice_id } => {
            sqlx::query(&format!("UPDATE {schema}.invoices SET status = 'void', amount_due = 0 WHERE id = $1"))
                .bind(invoice_id)
                .execute(&mut *conn)
                .await
        }
        Ordered::InvoicePaymentFailed { invoice_id, failed_at } => {
            sqlx::query(&format!("UPDATE {schema}.invoices SET payment_failed_at = $2 WHERE id = $1"))
                .bind(invoice_id)
                .bind(failed_at)
                .execute(&mut *conn)
                .await
        }
        Ordered::SpanClosed { subscription_id, at } => {
            sqlx::query(&format!("UPDATE {schema}.subscription_spans SET to_at = $2 WHERE subscription_id = $1 AND to_at IS NULL"))
                .bind(subscription_id)
                .bind(at)
                .execute(&mut *conn)
                .await
        }
        Ordered::SpanOpened { subscription_id, tenant_id, plan, period, value, at } => {
            sqlx::query(&format!(
                "INSERT INTO {schema}.subscription_spans VALUES ($1, $2, $3, $4, $5, $6, NULL)
                 ON CONFLICT (subscription_id, from_at) DO UPDATE SET plan = EXCLUDED.plan, billing_period = EXCLUDED.billing_period,
                     monthly_value = EXCLUDED.monthly_value, to_at = NULL"
            ))
            .bind(subscription_id)
            .bind(tenant_id)
            .bind(plan)
            .bind(period)
            .bind(value)
            .bind(at)
            .execute(&mut *conn)
            .await
        }
    };
    query.map(drop)
}

/// Every subscription's row in one upsert.
async fn write_subscriptions(conn: &mut PgConnection, schema: &str, rows: &[SubscriptionRow<'_>]) -> Result<(), sqlx::Error> {
    let plans: Vec<_> = rows.iter().map(|r| r.state.plan.as_ref()).collect();
    let periods: Vec<_> = rows.iter().map(|r| r.state.current_period()).collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.subscriptions (id, tenant_id, status, plan, plan_version, billing_period, trial_ends_at, current_period_start,
             current_period_end, cancel_at_period_end, next_due_at, state, updated_at, started_at, cancelled_at)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[], $6::text[], $7::timestamptz[],
             $8::timestamptz[], $9::timestamptz[], $10::boolean[], $11::timestamptz[], $12::jsonb[], $13::timestamptz[],
             $14::timestamptz[], $15::timestamptz[])
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, plan = EXCLUDED.plan, plan_version = EXCLUDED.plan_version,
             billing_period = EXCLUDED.billing_period, trial_ends_at = EXCLUDED.trial_ends_at,
             current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end, next_due_at = EXCLUDED.next_due_at, state = EXCLUDED.state,
             updated_at = EXCLUDED.updated_at, cancelled_at = EXCLUDED.cancelled_at"
    ))
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.tenant_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.status.as_str()).collect::<Vec<_>>())
    .bind(plans.iter().map(|p| p.map(|p| p.code.as_str())).collect::<Vec<_>>())
    .bind(plans.iter().map(|p| p.map(|p| p.version as i32)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.billing_period.map(|p| p.as_str())).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.trial_ends_at).collect::<Vec<_>>())
    .bind(periods.iter().map(|p| p.map(|p| p.start)).collect::<Vec<_>>())
    .bind(periods.iter().map(|p| p.map(|p| p.end)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.cancel_at_period_end).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.next_due_at()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| Json(r.state)).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.started_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.state.cancelled_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
