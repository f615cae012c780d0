//! The `billing` projection: subscriptions (`rm.subscriptions`), invoices (`rm.invoices`) with
//! their credit notes (`rm.credit_notes`), the credit ledger (`rm.credit_transactions`), and the
//! tables revenue analytics read (`rm.subscription_spans`, `rm.revenue_changes`,
//! `rm.subscription_changes`, and the view `analytics.revenue_monthly`). Its queries are in
//! [`reads`].
//!
//! A subscription row holds the domain aggregate's own state, folded with the domain's own
//! `apply`, plus the columns queries need (status, periods, the next instant the billing run
//! has something to do). So the read model can never disagree with the rules. The state is
//! kept compact (`Subscription::compact`: without the invoice books and payment ids that grow
//! every period and only commands need), so a row costs the same to read and write in a
//! subscription's fifth year as in its first.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::subscription::{Subscription, SubscriptionEvent};
use rust_decimal::Decimal;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

pub mod reads;
mod writes;

use writes::{InvoiceRow, Ordered, SubscriptionRow, Writes};

/// What a subscription pays per month while paying (active or past due): `(plan, period,
/// monthly value)`, or `None`.
fn paying(s: &Subscription) -> Option<(String, &'static str, rust_decimal::Decimal)> {
    use domain::plan::BillingPeriod;
    use domain::subscription::SubscriptionStatus;
    if !matches!(s.status, SubscriptionStatus::Active | SubscriptionStatus::PastDue) {
        return None;
    }
    let plan = s.plan.as_ref()?;
    let period = s.billing_period?;
    let monthly = match period {
        BillingPeriod::Monthly => plan.monthly_price,
        BillingPeriod::Yearly => domain::billing::money::round_cents(plan.yearly_price / rust_decimal::Decimal::from(12)),
    };
    Some((plan.code.to_string(), period.as_str(), monthly))
}

/// The first instant of `at`'s calendar month (UTC).
fn month_of(at: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike, TimeZone};
    chrono::Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0).single().unwrap_or(at)
}

/// A credit ledger entry: `(amount, reason, invoice, expires_at, created_at)`.
type CreditTransaction = (Decimal, String, Option<Uuid>, Option<DateTime<Utc>>, DateTime<Utc>);

/// The changes of the credit balance an event makes, as ledger entries.
fn credit_transactions(event: &SubscriptionEvent) -> Vec<CreditTransaction> {
    use domain::billing::invoice::LineKind;
    let mut entries = Vec::new();
    match event {
        SubscriptionEvent::InvoiceIssued { invoice_id, number, lines, credit_applied, credit_carried, issued_at, .. } => {
            for line in lines.iter().filter(|l| l.kind == LineKind::Credit) {
                let (amount, reason) = if line.amount > Decimal::ZERO {
                    let carried = if *credit_carried > Decimal::ZERO { *credit_carried } else { line.amount };
                    let corrections =
                        lines.iter().any(|l| matches!(l.kind, LineKind::Usage | LineKind::Overage) && l.amount < Decimal::ZERO);
                    let reason = if corrections {
                        format!("Usage corrections beyond invoice {number}, with their tax")
                    } else {
                        format!("Unused time carried from invoice {number}")
                    };
                    (carried, reason)
                } else {
                    (line.amount, format!("Applied to invoice {number}"))
                };
                // A carried amount adds to the balance; an applied one (before tax, in older invoices) takes from it.
                entries.push((amount, reason, Some(*invoice_id), None, *issued_at));
            }
            if *credit_applied > Decimal::ZERO {
                entries.push((-*credit_applied, format!("Applied to invoice {number}"), Some(*invoice_id), None, *issued_at));
            }
        }
        SubscriptionEvent::CreditGranted { amount, reason, expires_at, at, .. } => {
            entries.push((*amount, reason.clone(), None, *expires_at, *at))
        }
        SubscriptionEvent::CreditExpired { amount, at, .. } if *amount > Decimal::ZERO => {
            entries.push((-*amount, "Expired".to_owned(), None, None, *at))
        }
        SubscriptionEvent::CreditNoteIssued { number, invoice_id, credited_to_balance, created_at, .. }
            if *credited_to_balance > Decimal::ZERO =>
        {
            entries.push((*credited_to_balance, format!("Credit note {number}"), Some(*invoice_id), None, *created_at))
        }
        _ => {}
    }
    entries
}

/// Builds `subscriptions` and `invoices`.
#[derive(Debug, Clone, Copy)]
pub struct BillingProjection;

#[async_trait]
impl Projection for BillingProjection {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn version(&self) -> i32 {
        // 2: monthly revenue rollups. 3: credit applied after tax, credit notes, the credit ledger.
        // 4: the state kept compact (`Subscription::compact`).
        4
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Subscription"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "subscriptions",
            "invoices",
            "subscription_spans",
            "revenue_changes",
            "subscription_changes",
            "credit_notes",
            "credit_transactions",
        ]
    }

    /// `analytics.revenue_monthly`: per calendar month (UTC), the MRR at month end (monthly
    /// value of paying subscriptions: active or past due; yearly at a twelfth), ARR = 12 × MRR,
    /// active tenants at month end, tenants signed up and cancelled in the month, churn rate =
    /// cancelled / active at the month's start, and MRR by plan.
    ///
    /// Read from monthly rollups the projection keeps (`revenue_changes`: how a month changed
    /// each plan's MRR and paying count; `subscription_changes`: sign-ups and cancellations per
    /// month), so its cost grows with months × plans, never with tenants: a month's MRR is the
    /// running sum of the changes up to it.
    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        vec![(
            "revenue_monthly",
            "WITH bounds AS (
                 SELECT min(month) AS first,
                        greatest(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', max(month)) AS last
                 FROM (SELECT month FROM {schema}.revenue_changes UNION ALL SELECT month FROM {schema}.subscription_changes) m
             ),
             months AS (
                 SELECT m AT TIME ZONE 'UTC' AS month
                 FROM bounds, generate_series(bounds.first AT TIME ZONE 'UTC', bounds.last AT TIME ZONE 'UTC', interval '1 month') m
                 WHERE bounds.first IS NOT NULL
             ),
             per_plan AS (
                 SELECT months.month, plans.plan,
                        sum(coalesce(c.mrr, 0)) OVER w AS mrr,
                        sum(coalesce(c.paying, 0)) OVER w AS paying
                 FROM months
                 CROSS JOIN (SELECT DISTINCT plan FROM {schema}.revenue_changes) plans
                 LEFT JOIN {schema}.revenue_changes c ON c.month = months.month AND c.plan = plans.plan
                 WINDOW w AS (PARTITION BY plans.plan ORDER BY months.month)
             ),
             totals AS (
                 SELECT month, sum(mrr) AS mrr, sum(paying) AS paying,
                        jsonb_object_agg(plan, mrr::text) FILTER (WHERE paying > 0) AS by_plan
                 FROM per_plan GROUP BY month
             )
             SELECT months.month,
                    coalesce(t.mrr, 0) AS mrr,
                    12 * coalesce(t.mrr, 0) AS arr,
                    coalesce(t.paying, 0)::bigint AS active_tenants,
                    coalesce(k.started, 0)::bigint AS new_tenants,
                    coalesce(k.cancelled, 0)::bigint AS churned_tenants,
                    coalesce(lag(t.paying) OVER (ORDER BY months.month), 0)::bigint AS active_at_start,
                    coalesce(t.by_plan, '{}'::jsonb) AS by_plan
             FROM months
             LEFT JOIN totals t ON t.month = months.month
             LEFT JOIN {schema}.subscription_changes k ON k.month = months.month"
                .to_owned(),
        )]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.subscriptions (
                 id                   uuid PRIMARY KEY,
                 tenant_id            uuid NOT NULL UNIQUE,
                 status               text NOT NULL,
                 plan                 text NOT NULL,
                 plan_version         integer NOT NULL,
                 billing_period       text NOT NULL,
                 trial_ends_at        timestamptz,
                 current_period_start timestamptz,
                 current_period_end   timestamptz,
                 cancel_at_period_end boolean NOT NULL,
                 next_due_at          timestamptz,
                 started_at           timestamptz,
                 cancelled_at         timestamptz,
                 state                jsonb NOT NULL,
                 updated_at           timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.subscriptions (next_due_at);
             CREATE TABLE {schema}.subscription_spans (
                 subscription_id uuid NOT NULL,
                 tenant_id       uuid NOT NULL,
                 plan            text NOT NULL,
                 billing_period  text NOT NULL,
                 monthly_value   numeric NOT NULL,
                 from_at         timestamptz NOT NULL,
                 to_at           timestamptz,
                 PRIMARY KEY (subscription_id, from_at)
             );
             CREATE TABLE {schema}.revenue_changes (
                 month  timestamptz NOT NULL,
                 plan   text NOT NULL,
                 mrr    numeric NOT NULL,
                 paying bigint NOT NULL,
                 PRIMARY KEY (month, plan)
             );
             CREATE TABLE {schema}.subscription_changes (
                 month     timestamptz PRIMARY KEY,
                 started   bigint NOT NULL,
                 cancelled bigint NOT NULL
             );
             CREATE TABLE {schema}.invoices (
                 id              uuid PRIMARY KEY,
                 number          text NOT NULL,
                 tenant_id       uuid NOT NULL,
                 subscription_id uuid NOT NULL,
                 period_start    timestamptz NOT NULL,
                 period_end      timestamptz NOT NULL,
                 currency        text NOT NULL,
                 status          text NOT NULL,
                 lines           jsonb NOT NULL,
                 subtotal        numeric NOT NULL,
                 tax             numeric NOT NULL,
                 total           numeric NOT NULL,
                 credit_applied  numeric NOT NULL DEFAULT 0,
                 amount_due      numeric NOT NULL,
                 issued_at       timestamptz NOT NULL,
                 due_at          timestamptz NOT NULL,
                 paid_at         timestamptz,
                 payment_failed_at timestamptz,
                 UNIQUE (tenant_id, number)
             );
             CREATE INDEX ON {schema}.invoices (tenant_id, issued_at);
             CREATE TABLE {schema}.credit_notes (
                 id          uuid PRIMARY KEY,
                 number      text NOT NULL,
                 invoice_id  uuid NOT NULL,
                 tenant_id   uuid NOT NULL,
                 subtotal    numeric NOT NULL,
                 tax         numeric NOT NULL,
                 total       numeric NOT NULL,
                 reason      text NOT NULL,
                 created_at  timestamptz NOT NULL,
                 UNIQUE (tenant_id, number)
             );
             CREATE INDEX ON {schema}.credit_notes (invoice_id);
             CREATE TABLE {schema}.credit_transactions (
                 tenant_id   uuid NOT NULL,
                 position    bigint NOT NULL,
                 amount      numeric NOT NULL,
                 reason      text NOT NULL,
                 invoice_id  uuid,
                 expires_at  timestamptz,
                 created_at  timestamptz NOT NULL,
                 PRIMARY KEY (tenant_id, position)
             );"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        self.apply_batch(conn, schema, std::slice::from_ref(event)).await
    }

    /// Each subscription's state read once and written once per batch (a subscription's state
    /// is its whole history's fold: reading and writing it per event made the projection the
    /// slowest by far on subscription-heavy logs), and everything else the batch writes
    /// gathered into a few statements ([`writes`]). One event is a batch of one.
    async fn apply_batch(&self, conn: &mut PgConnection, schema: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        let events: Vec<&StoredEvent> = events.iter().filter(|e| e.aggregate_type == "Subscription").collect();
        if events.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(events.len());
        for event in &events {
            ids.push(subscription_id(event)?);
        }
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // A subscription whose first event here is its first of all (a sign-up) has no row yet:
        // only the others' states are read.
        let mut started = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for (event, id) in events.iter().zip(&ids) {
            if seen.insert(*id) && event.sequence == 1 {
                started.insert(*id);
            }
        }
        let known: Vec<Uuid> = distinct.iter().copied().filter(|id| !started.contains(id)).collect();
        let rows: Vec<(Uuid, Json<Subscription>)> = if known.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(&format!("SELECT id, state FROM {schema}.subscriptions WHERE id = ANY($1)"))
                .bind(&known)
                .fetch_all(&mut *conn)
                .await?
        };
        let mut states: std::collections::HashMap<Uuid, Subscription> = rows.into_iter().map(|(id, Json(s))| (id, s)).collect();
        let mut last: std::collections::HashMap<Uuid, &StoredEvent> = std::collections::HashMap::new();
        let mut writes = Writes::default();
        for (event, id) in events.iter().zip(ids) {
            let state = states.entry(id).or_default();
            fold(&mut writes, event, id, state)?;
            last.insert(id, event);
        }
        for state in states.values_mut() {
            *state = state.compact();
        }
        let mut subscriptions = Vec::with_capacity(last.len());
        for id in distinct {
            let (state, event) = (&states[&id], last[&id]);
            if state.plan.is_none() {
                return Err(ProjectionError::payload(event, serde::de::Error::custom("subscription event before its start")));
            }
            subscriptions.push(SubscriptionRow { id, state, updated_at: event.occurred_at() });
        }
        writes.write(conn, schema, &subscriptions).await?;
        Ok(())
    }
}

/// The subscription an event belongs to.
fn subscription_id(event: &StoredEvent) -> Result<Uuid, ProjectionError> {
    event.aggregate_id.parse().map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))
}

/// Applies `event` to subscription `id`'s `state` and gathers in `writes` what it changes
/// besides the subscription row: invoices, credit notes and credit, revenue and count changes,
/// spans.
fn fold(writes: &mut Writes, event: &StoredEvent, id: Uuid, state: &mut Subscription) -> Result<(), ProjectionError> {
    let subscription_event: SubscriptionEvent =
        serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
    match &subscription_event {
        SubscriptionEvent::InvoiceIssued {
            invoice_id,
            number,
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
            paid_at,
            ..
        } => writes.issue(InvoiceRow {
            id: *invoice_id,
            number: number.clone(),
            tenant_id: state.tenant_id,
            subscription_id: id,
            period_start: *period_start,
            period_end: *period_end,
            currency: currency.clone(),
            status: if paid_at.is_some() { "paid" } else { "open" },
            lines: serde_json::to_value(lines).map_err(|e| ProjectionError::payload(event, serde::de::Error::custom(e)))?,
            subtotal: *subtotal,
            tax: *tax,
            total: *total,
            credit_applied: *credit_applied,
            amount_due: total - credit_applied,
            issued_at: *issued_at,
            due_at: *due_at,
            paid_at: *paid_at,
            payment_failed_at: None,
        }),
        SubscriptionEvent::CreditNoteIssued {
            credit_note_id,
            number,
            invoice_id,
            subtotal,
            tax,
            total,
            reason,
            applied_to_invoice,
            created_at,
            ..
        } => {
            writes.ordered(Ordered::CreditNote {
                id: *credit_note_id,
                number: number.clone(),
                invoice_id: *invoice_id,
                tenant_id: state.tenant_id,
                subtotal: *subtotal,
                tax: *tax,
                total: *total,
                reason: reason.clone(),
                created_at: *created_at,
            });
            writes.credited(*invoice_id, *applied_to_invoice, *created_at);
        }
        SubscriptionEvent::PaymentSucceeded { invoice_id, paid_at, .. } => writes.paid(*invoice_id, *paid_at),
        SubscriptionEvent::InvoiceVoided { invoice_id, .. } => writes.voided(*invoice_id),
        SubscriptionEvent::PaymentFailed { invoice_id, failed_at, .. } => writes.payment_failed(*invoice_id, *failed_at),
        _ => {}
    }
    for (index, (amount, reason, invoice_id, expires_at, at)) in credit_transactions(&subscription_event).into_iter().enumerate() {
        writes.credit((state.tenant_id, event.position * 4 + index as i64, amount, reason, invoice_id, expires_at, at));
    }
    let paying_before = paying(state);
    let (started_before, cancelled_before) = (state.started_at, state.cancelled_at);
    // Spans start and end when the change took effect, not when the billing run got to
    // recording it (after a pause, or a jump of the test clock, those differ by days).
    let at = subscription_event.effective_at().unwrap_or_else(|| event.occurred_at());
    state.apply(subscription_event);
    let paying_after = paying(state);
    for (before, after, started) in [(started_before, state.started_at, true), (cancelled_before, state.cancelled_at, false)] {
        if before != after {
            for (at, change) in [(before, -1i64), (after, 1)] {
                if let Some(at) = at {
                    let (s, c) = if started { (change, 0) } else { (0, change) };
                    writes.count(month_of(at), s, c);
                }
            }
        }
    }
    if paying_before != paying_after {
        if let Some((plan, _, value)) = &paying_before {
            writes.revenue(month_of(at), plan, -*value, -1);
        }
        if let Some((plan, _, value)) = &paying_after {
            writes.revenue(month_of(at), plan, *value, 1);
        }
        writes.ordered(Ordered::SpanClosed { subscription_id: id, at });
        if let Some((plan, period, value)) = paying_after {
            writes.ordered(Ordered::SpanOpened { subscription_id: id, tenant_id: state.tenant_id, plan, period, value, at });
        }
    }
    if state.plan.is_none() {
        return Err(ProjectionError::payload(event, serde::de::Error::custom("subscription event before its start")));
    }
    Ok(())
}
