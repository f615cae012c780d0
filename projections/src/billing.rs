//! The `billing` projection: subscriptions (`rm.subscriptions`) and invoices (`rm.invoices`).
//!
//! A subscription row holds the domain aggregate's own state, folded with the domain's own
//! `apply`, plus the columns queries need (status, periods, the next instant the billing run
//! has something to do). So the read model can never disagree with the rules.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::subscription::{Subscription, SubscriptionEvent};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

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

/// Builds `subscriptions` and `invoices`.
#[derive(Debug, Clone, Copy)]
pub struct BillingProjection;

#[async_trait]
impl Projection for BillingProjection {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn version(&self) -> i32 {
        1
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Subscription"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["subscriptions", "invoices", "subscription_spans"]
    }

    /// `analytics.revenue_monthly`: per calendar month (UTC), the MRR at month end (monthly
    /// value of paying subscriptions: active or past due; yearly at a twelfth), ARR = 12 × MRR,
    /// active tenants at month end, tenants signed up and cancelled in the month, churn rate =
    /// cancelled / active at the month's start, and MRR by plan.
    fn analytics_views(&self) -> Vec<(&'static str, String)> {
        vec![(
            "revenue_monthly",
            "WITH bounds AS (
                 SELECT least(min(from_at), (SELECT min(started_at) FROM {schema}.subscriptions)) AS first,
                        greatest(now(), max(from_at), max(to_at), (SELECT max(started_at) FROM {schema}.subscriptions),
                                 (SELECT max(cancelled_at) FROM {schema}.subscriptions)) AS last
                 FROM {schema}.subscription_spans
             ),
             months AS (
                 SELECT m AT TIME ZONE 'UTC' AS month, (m + interval '1 month') AT TIME ZONE 'UTC' AS month_end
                 FROM bounds, generate_series(date_trunc('month', bounds.first AT TIME ZONE 'UTC'), date_trunc('month', bounds.last AT TIME ZONE 'UTC'), interval '1 month') m
                 WHERE bounds.first IS NOT NULL
             ),
             at_end AS (
                 SELECT months.month, s.tenant_id, s.plan, s.monthly_value
                 FROM months JOIN {schema}.subscription_spans s ON s.from_at < months.month_end AND (s.to_at IS NULL OR s.to_at >= months.month_end)
             ),
             by_plan AS (
                 SELECT month, jsonb_object_agg(plan, mrr::text) AS by_plan FROM (SELECT month, plan, sum(monthly_value) AS mrr FROM at_end GROUP BY month, plan) p GROUP BY month
             )
             SELECT months.month,
                    coalesce((SELECT sum(monthly_value) FROM at_end WHERE at_end.month = months.month), 0) AS mrr,
                    12 * coalesce((SELECT sum(monthly_value) FROM at_end WHERE at_end.month = months.month), 0) AS arr,
                    (SELECT count(DISTINCT tenant_id) FROM at_end WHERE at_end.month = months.month) AS active_tenants,
                    (SELECT count(*) FROM {schema}.subscriptions WHERE started_at >= months.month AND started_at < months.month_end) AS new_tenants,
                    (SELECT count(*) FROM {schema}.subscriptions WHERE cancelled_at >= months.month AND cancelled_at < months.month_end) AS churned_tenants,
                    (SELECT count(DISTINCT tenant_id) FROM {schema}.subscription_spans s
                      WHERE s.from_at < months.month AND (s.to_at IS NULL OR s.to_at >= months.month)) AS active_at_start,
                    coalesce(by_plan.by_plan, '{}'::jsonb) AS by_plan
             FROM months LEFT JOIN by_plan ON by_plan.month = months.month"
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
                 issued_at       timestamptz NOT NULL,
                 due_at          timestamptz NOT NULL,
                 paid_at         timestamptz,
                 payment_failed_at timestamptz,
                 UNIQUE (tenant_id, number)
             );
             CREATE INDEX ON {schema}.invoices (tenant_id, issued_at);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        if event.aggregate_type != "Subscription" {
            return Ok(());
        }
        let subscription_event: SubscriptionEvent =
            serde::Deserialize::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let id: Uuid = event
            .aggregate_id
            .parse()
            .map_err(|_| ProjectionError::payload(event, serde::de::Error::custom("aggregate id is not a uuid")))?;
        let previous: Option<Json<Subscription>> = sqlx::query_scalar(&format!("SELECT state FROM {schema}.subscriptions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let mut state = previous.map(|Json(s)| s).unwrap_or_default();
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
                issued_at,
                due_at,
                paid_at,
            } => {
                sqlx::query(&format!(
                    "INSERT INTO {schema}.invoices (id, number, tenant_id, subscription_id, period_start, period_end, currency, status, lines,
                         subtotal, tax, total, issued_at, due_at, paid_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(invoice_id)
                .bind(number)
                .bind(state.tenant_id)
                .bind(id)
                .bind(period_start)
                .bind(period_end)
                .bind(currency)
                .bind(if paid_at.is_some() { "paid" } else { "open" })
                .bind(Json(lines))
                .bind(subtotal)
                .bind(tax)
                .bind(total)
                .bind(issued_at)
                .bind(due_at)
                .bind(paid_at)
                .execute(&mut *conn)
                .await?;
            }
            SubscriptionEvent::PaymentSucceeded { invoice_id, paid_at, .. } => {
                sqlx::query(&format!("UPDATE {schema}.invoices SET status = 'paid', paid_at = $2 WHERE id = $1"))
                    .bind(invoice_id)
                    .bind(paid_at)
                    .execute(&mut *conn)
                    .await?;
            }
            SubscriptionEvent::PaymentFailed { invoice_id, failed_at, .. } => {
                sqlx::query(&format!("UPDATE {schema}.invoices SET payment_failed_at = $2 WHERE id = $1"))
                    .bind(invoice_id)
                    .bind(failed_at)
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
        let paying_before = paying(&state);
        state.apply(subscription_event);
        let paying_after = paying(&state);
        if paying_before != paying_after {
            let at = event.occurred_at();
            sqlx::query(&format!("UPDATE {schema}.subscription_spans SET to_at = $2 WHERE subscription_id = $1 AND to_at IS NULL"))
                .bind(id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            if let Some((plan, period, value)) = paying_after {
                sqlx::query(&format!(
                    "INSERT INTO {schema}.subscription_spans VALUES ($1, $2, $3, $4, $5, $6, NULL)
                     ON CONFLICT (subscription_id, from_at) DO UPDATE SET plan = EXCLUDED.plan, billing_period = EXCLUDED.billing_period,
                         monthly_value = EXCLUDED.monthly_value, to_at = NULL"
                ))
                .bind(id)
                .bind(state.tenant_id)
                .bind(plan)
                .bind(period)
                .bind(value)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
        }
        let plan = state
            .plan
            .as_ref()
            .ok_or_else(|| ProjectionError::payload(event, serde::de::Error::custom("subscription event before its start")))?;
        let period = state.current_period();
        sqlx::query(&format!(
            "INSERT INTO {schema}.subscriptions (id, tenant_id, status, plan, plan_version, billing_period, trial_ends_at, current_period_start,
                 current_period_end, cancel_at_period_end, next_due_at, state, updated_at, started_at, cancelled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, plan = EXCLUDED.plan, plan_version = EXCLUDED.plan_version,
                 billing_period = EXCLUDED.billing_period, trial_ends_at = EXCLUDED.trial_ends_at,
                 current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end, next_due_at = EXCLUDED.next_due_at, state = EXCLUDED.state,
                 updated_at = EXCLUDED.updated_at, cancelled_at = EXCLUDED.cancelled_at"
        ))
        .bind(id)
        .bind(state.tenant_id)
        .bind(state.status.as_str())
        .bind(plan.code.as_str())
        .bind(plan.version as i32)
        .bind(state.billing_period.map(|p| p.as_str()))
        .bind(state.trial_ends_at)
        .bind(period.map(|p| p.start))
        .bind(period.map(|p| p.end))
        .bind(state.cancel_at_period_end)
        .bind(state.next_due_at())
        .bind(Json(&state))
        .bind(event.occurred_at())
        .bind(state.started_at)
        .bind(state.cancelled_at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
