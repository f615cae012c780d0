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

    fn tables(&self) -> &'static [&'static str] {
        &["subscriptions", "invoices"]
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
                 state                jsonb NOT NULL,
                 updated_at           timestamptz NOT NULL
             );
             CREATE INDEX ON {schema}.subscriptions (next_due_at);
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
            serde_json::from_value(event.payload.clone()).map_err(|e| ProjectionError::payload(event, e))?;
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
        state.apply(subscription_event);
        let plan = state
            .plan
            .as_ref()
            .ok_or_else(|| ProjectionError::payload(event, serde::de::Error::custom("subscription event before its start")))?;
        let period = state.current_period();
        sqlx::query(&format!(
            "INSERT INTO {schema}.subscriptions (id, tenant_id, status, plan, plan_version, billing_period, trial_ends_at, current_period_start,
                 current_period_end, cancel_at_period_end, next_due_at, state, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, plan = EXCLUDED.plan, plan_version = EXCLUDED.plan_version,
                 billing_period = EXCLUDED.billing_period, trial_ends_at = EXCLUDED.trial_ends_at,
                 current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end, next_due_at = EXCLUDED.next_due_at, state = EXCLUDED.state,
                 updated_at = EXCLUDED.updated_at"
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
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
