//! The billing run: every subscription with something due (trial ends, renewals with their
//! invoices, grace expiries) is advanced to an instant, tenants whose sign-up or status change
//! stopped half-way are repaired, and the run is serialised across every instance.
//!
//! It reads the read models to find what is due (`rm.subscriptions`, `rm.tenants`), so it runs
//! between two waits for them to include everything appended so far (`settle`), and under an
//! advisory lock held on a connection of its own (closed, and so released, whatever happens to
//! the caller's future). Idempotent: a second run as of the same instant changes nothing.

use std::future::Future;

use chrono::{DateTime, Utc};
use domain::plan::Plan;
use domain::subscription::{PlanTerms, StartSubscription, SubscriptionCommand, SubscriptionError};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::accounts::Accounts;
use crate::{Actor, CommandContext, CommandError};

/// What one billing run did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = BillingRunReport)]
pub struct BillingReport {
    /// The instant it ran as of.
    pub as_of: Option<DateTime<Utc>>,
    /// Subscriptions that had something due.
    pub subscriptions_due: usize,
    /// Subscriptions that appended events.
    pub subscriptions_changed: usize,
    /// Invoices issued.
    pub invoices_issued: usize,
    /// Tenants whose status was brought in line with their subscription.
    pub tenants_updated: usize,
    /// Tenants whose missing subscription was opened.
    pub subscriptions_repaired: usize,
    /// Subscriptions that failed (they are retried by the next run).
    pub failures: Vec<String>,
}

impl Accounts {
    /// [`Self::run_billing`] serialised across every instance by the advisory lock `lock_key`,
    /// with the read models settled (`settle`) before and after.
    pub async fn run_billing_exclusively<S, F>(
        &self,
        as_of: DateTime<Utc>,
        correlation_id: &str,
        lock_key: i64,
        settle: S,
    ) -> Result<BillingReport, sqlx::Error>
    where
        S: Fn() -> F,
        F: Future<Output = ()>,
    {
        let mut lock = self.pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)").bind(lock_key).execute(&mut lock).await?;
        settle().await;
        let report = self.run_billing(as_of, correlation_id).await;
        if report.is_ok() {
            settle().await;
        }
        let _ = sqlx::Connection::close(lock).await;
        report
    }

    /// The billing run as of `as_of`: opens missing subscriptions, advances every subscription
    /// with something due (trial ends, renewals with their invoices, grace expiries), and
    /// brings tenants in line. Idempotent: a second run as of the same instant changes nothing.
    pub async fn run_billing(&self, as_of: DateTime<Utc>, correlation_id: &str) -> Result<BillingReport, sqlx::Error> {
        let mut report = BillingReport { as_of: Some(as_of), ..BillingReport::default() };
        let context = |tenant_id: Uuid| CommandContext {
            tenant_id: Some(tenant_id),
            actor: Actor::System("billing"),
            correlation_id: correlation_id.to_owned(),
            causation_id: correlation_id.to_owned(),
            at: as_of,
            command: None,
        };

        // Tenants whose sign-up stopped between the tenant and its subscription.
        let orphans: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT t.id FROM rm.tenants t LEFT JOIN rm.subscriptions s ON s.id = t.subscription_id
             WHERE s.id IS NULL AND t.status <> 'cancelled' AND t.created_at <= $1",
        )
        .bind(as_of)
        .fetch_all(&self.pool)
        .await?;
        for (tenant_id,) in orphans {
            match self.open_missing_subscription(tenant_id, &context(tenant_id)).await {
                Ok(true) => report.subscriptions_repaired += 1,
                Ok(false) => {}
                Err(e) => report.failures.push(format!("tenant {tenant_id}: {e}")),
            }
        }

        // Due: something to do by `as_of`; and subscriptions cancelled less than the late-usage
        // window ago, whose late usage (if any turned up) gets a final invoice.
        let due: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, tenant_id FROM rm.subscriptions WHERE next_due_at <= $1
             UNION
             SELECT id, tenant_id FROM rm.subscriptions
             WHERE status = 'cancelled' AND cancelled_at <= $1 AND cancelled_at > $1 - make_interval(days => $2)
             ORDER BY 1",
        )
        .bind(as_of)
        .bind(domain::subscription::LATE_USAGE_DAYS as i32)
        .fetch_all(&self.pool)
        .await?;
        report.subscriptions_due = due.len();
        // Up to `billing_concurrency` subscriptions at once: each is its own stream (and numbers
        // its own tenant's invoices), so they cannot conflict, and their appends share the
        // group-commit writer's statements and commits.
        let advance = |(subscription_id, tenant_id): (Uuid, Uuid)| {
            let context = context(tenant_id);
            async move {
                let mut outcome = Advanced::default();
                match self.subscriptions.execute(subscription_id, SubscriptionCommand::AdvanceTo { as_of }, &context).await {
                    Ok(committed) if !committed.events.is_empty() => {
                        outcome.changed = true;
                        outcome.invoices = committed.events.iter().filter(|e| e.payload.event_type_is("InvoiceIssued")).count();
                        // Only a subscription suspended, reactivated or cancelled moves its tenant
                        // (a renewal does not: loading the tenant for nothing was a statement per
                        // renewal). One that stopped before its tenant followed is found by the
                        // repair below.
                        if committed.events.iter().any(|e| MOVES_TENANT.iter().any(|t| e.payload.event_type_is(t))) {
                            match self.sync_tenant(&committed.state, &context).await {
                                Ok(Some(_)) => outcome.tenant_updated = true,
                                Ok(None) => {}
                                Err(e) => outcome.failure = Some(format!("tenant {tenant_id}: {e}")),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => outcome.failure = Some(format!("subscription {subscription_id}: {e}")),
                }
                outcome
            }
        };
        let mut outcomes = futures::stream::iter(due).map(advance).buffer_unordered(self.billing_concurrency);
        while let Some(outcome) = outcomes.next().await {
            report.subscriptions_changed += usize::from(outcome.changed);
            report.invoices_issued += outcome.invoices;
            report.tenants_updated += usize::from(outcome.tenant_updated);
            report.failures.extend(outcome.failure);
        }
        drop(outcomes);

        // Tenants left out of line with their subscription by an earlier crash.
        let mismatched: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT s.id, s.tenant_id FROM rm.subscriptions s JOIN rm.tenants t ON t.id = s.tenant_id
             WHERE (s.status = 'suspended' AND t.status = 'active')
                OR (s.status IN ('trialing', 'active', 'past_due') AND t.status = 'suspended' AND t.suspended_by = 'billing')
                OR (s.status = 'cancelled' AND t.status <> 'cancelled')",
        )
        .fetch_all(&self.pool)
        .await?;
        for (subscription_id, tenant_id) in mismatched {
            let result = match self.subscriptions.load(subscription_id).await {
                Ok(Some(state)) => self.sync_tenant(&state, &context(tenant_id)).await.map_err(|e| e.to_string()),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(Some(_)) => report.tenants_updated += 1,
                Ok(None) => {}
                Err(e) => report.failures.push(format!("tenant {tenant_id}: {e}")),
            }
        }
        Ok(report)
    }

    /// Opens the subscription a tenant's sign-up promised, from the tenant's own record.
    async fn open_missing_subscription(&self, tenant_id: Uuid, context: &CommandContext) -> Result<bool, String> {
        let row: Option<TenantTerms> = sqlx::query_as(
            "SELECT code, currency, tax_rate, plan, plan_version, billing_period, trial_days, subscription_id, created_at FROM rm.tenants WHERE id = $1",
        )
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        let Some((code, currency, tax_rate, plan, plan_version, billing_period, trial_days, subscription_id, created_at)) = row else {
            return Ok(false);
        };
        let plan_json: Option<serde_json::Value> = sqlx::query_scalar("SELECT definition FROM rm.plans WHERE code = $1 AND version = $2")
            .bind(&plan)
            .bind(plan_version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let plan: Plan =
            serde_json::from_value(plan_json.ok_or("the tenant's plan version is not in the catalog")?).map_err(|e| e.to_string())?;
        let terms = PlanTerms::in_currency(&plan, &currency).map_err(|e| e.to_string())?;
        let start = StartSubscription {
            subscription_id,
            tenant_id,
            tenant_code: code,
            currency,
            tax_rate: domain::values::TaxRate::parse(&tax_rate.to_string()).map_err(|e| e.to_string())?,
            plan: terms,
            billing_period: domain::plan::BillingPeriod::parse(&billing_period).map_err(|e| e.to_string())?,
            trial_days: trial_days as u32,
            // The tenant's record does not keep the sign-up's payment terms: a subscription
            // repaired here starts with immediate payment (the admin can set its terms).
            net_terms_days: 0,
            at: created_at,
        };
        match self.subscriptions.execute(subscription_id, SubscriptionCommand::Start(Box::new(start)), context).await {
            Ok(_) | Err(CommandError::Domain(SubscriptionError::AlreadyExists)) => Ok(true),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The subscription events after which its tenant's status may have to follow.
const MOVES_TENANT: [&str; 3] = ["SubscriptionSuspended", "SubscriptionReactivated", "SubscriptionCancelled"];

/// What advancing one subscription did.
#[derive(Default)]
struct Advanced {
    changed: bool,
    invoices: usize,
    tenant_updated: bool,
    failure: Option<String>,
}

/// What a tenant's record says about the subscription its sign-up promised: code, currency,
/// tax rate, plan, plan version, billing period, trial days, subscription id, sign-up time.
type TenantTerms = (String, String, rust_decimal::Decimal, String, i32, String, i32, Uuid, DateTime<Utc>);

/// Asks an event its type by name without matching on it.
trait EventTypeIs {
    fn event_type_is(&self, name: &str) -> bool;
}

impl<E: cqrs_es::DomainEvent> EventTypeIs for E {
    fn event_type_is(&self, name: &str) -> bool {
        self.event_type() == name
    }
}
