//! Work that spans aggregates: signing a tenant up (tenant + subscription), the billing run,
//! payment notifications, and keeping a tenant's status in line with its subscription.
//!
//! Each step is its own transaction on its own aggregate, so a crash can leave a step undone
//! (a tenant without its subscription, a suspended subscription whose tenant is still active).
//! The billing run repairs exactly those cases every time it runs, so the system converges.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::plan::Plan;
use domain::subscription::{
    PaymentOutcome, PlanTerms, StartSubscription, Subscription, SubscriptionCommand, SubscriptionError, SubscriptionStatus,
};
use domain::tenant::{SuspensionSource, Tenant, TenantCommand, TenantError};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::plans::Plans;
use crate::subscriptions::Subscriptions;
use crate::tenants::{IssuedKey, SignUp, Tenants};
use crate::{Actor, CommandContext, CommandError, Committed};

/// What one billing run did.
#[derive(Debug, Default, Clone, Serialize)]
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

/// The cross-aggregate service.
pub struct Accounts {
    pool: PgPool,
    plans: Arc<Plans>,
    tenants: Arc<Tenants>,
    subscriptions: Arc<Subscriptions>,
}

/// The result of a sign-up.
#[derive(Debug)]
pub struct SignedUp {
    /// The owner key, shown once.
    pub key: IssuedKey,
    /// The tenant.
    pub tenant: Committed<Tenant>,
    /// Its subscription.
    pub subscription: Committed<Subscription>,
}

impl Accounts {
    /// The service over the three aggregate services.
    pub fn new(pool: PgPool, plans: Arc<Plans>, tenants: Arc<Tenants>, subscriptions: Arc<Subscriptions>) -> Self {
        Self { pool, plans, tenants, subscriptions }
    }

    /// The subscriptions' command service.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// The catalog.
    pub fn plans(&self) -> &Plans {
        &self.plans
    }

    /// Signs a tenant up on the latest version of `plan` and opens its subscription.
    pub async fn sign_up(&self, sign_up: SignUp, plan: &Plan, context: &CommandContext) -> Result<SignedUp, CommandError<TenantError>> {
        // A plan not sold in the tenant's currency is refused before anything is recorded.
        let terms = PlanTerms::in_currency(plan, sign_up.currency.as_str()).map_err(|e| CommandError::Domain(TenantError::Invalid(e)))?;
        let (key, tenant) = self.tenants.sign_up(sign_up.clone(), plan, context).await?;
        let state = &tenant.state;
        let (tenant_id, subscription_id) = (state.id.expect("created"), state.subscription_id.expect("created"));
        let start = StartSubscription {
            subscription_id,
            tenant_id,
            tenant_code: sign_up.code.to_string(),
            currency: sign_up.currency.to_string(),
            tax_rate: sign_up.tax_rate,
            plan: terms,
            billing_period: sign_up.billing_period,
            trial_days: sign_up.trial_days,
            net_terms_days: sign_up.net_terms_days,
            at: context.at,
        };
        let subscription = self
            .subscriptions
            .execute(subscription_id, SubscriptionCommand::Start(Box::new(start)), &context.for_tenant(tenant_id))
            .await
            .map_err(|e| e.map_domain(|e| TenantError::Invalid(domain::ValidationError::new("subscription", e.to_string()))))?;
        Ok(SignedUp { key, tenant, subscription })
    }

    /// Runs a subscription command for `tenant_id`'s subscription, then brings the tenant's
    /// status in line with the subscription's.
    pub async fn subscription_command(
        &self,
        subscription_id: Uuid,
        command: SubscriptionCommand,
        context: &CommandContext,
    ) -> Result<Committed<Subscription>, CommandError<SubscriptionError>> {
        let committed = self.subscriptions.execute(subscription_id, command, context).await?;
        if !committed.events.is_empty() {
            self.sync_tenant(&committed.state, context)
                .await
                .map_err(|e| e.map_domain(|e| SubscriptionError::Invalid(domain::ValidationError::new("tenant", e.to_string()))))?;
        }
        Ok(committed)
    }

    /// GDPR erasure of `tenant_id`: destroys its personal-data key first (from that instant
    /// nothing personal of it can be read anywhere: events, read models, replay, exports), then
    /// ends its subscription at once (no more invoices) and records the erasure on the tenant.
    /// Safe to repeat: a second call finds everything done and changes nothing.
    pub async fn erase(&self, tenant_id: Uuid, context: &CommandContext) -> Result<Committed<Tenant>, CommandError<TenantError>> {
        let Some(tenant) = self.tenants.load(tenant_id).await? else { return Err(CommandError::Domain(TenantError::NotFound)) };
        self.tenants.vault().shred(tenant_id).await.map_err(|e| CommandError::Internal(e.to_string()))?;
        let context = context.for_tenant(tenant_id);
        if let Some(subscription_id) = tenant.subscription_id {
            let cancel = SubscriptionCommand::Cancel { at_period_end: false, at: context.at };
            match self.subscription_command(subscription_id, cancel, &context).await {
                Ok(_) | Err(CommandError::Domain(SubscriptionError::InvalidTransition { .. } | SubscriptionError::NotFound)) => {}
                Err(e) => return Err(CommandError::Internal(format!("cancelling the subscription: {e}"))),
            }
        }
        self.tenants.execute(tenant_id, TenantCommand::Erase { at: context.at }, &context).await
    }

    /// Records a payment notification for an invoice.
    pub async fn record_payment(
        &self,
        subscription_id: Uuid,
        payment_id: String,
        invoice_id: Uuid,
        outcome: PaymentOutcome,
        context: &CommandContext,
    ) -> Result<Committed<Subscription>, CommandError<SubscriptionError>> {
        let command = SubscriptionCommand::RecordPayment { payment_id, invoice_id, outcome, at: context.at };
        self.subscription_command(subscription_id, command, context).await
    }

    /// Suspends, reactivates or cancels the tenant to match its subscription. Transitions the
    /// tenant is already past (suspending a suspended tenant) change nothing.
    pub async fn sync_tenant(
        &self,
        subscription: &Subscription,
        context: &CommandContext,
    ) -> Result<Option<Committed<Tenant>>, CommandError<TenantError>> {
        let Some(tenant_id) = subscription.tenant_id else { return Ok(None) };
        let command = match subscription.status {
            SubscriptionStatus::Suspended => TenantCommand::Suspend {
                reason: "payment overdue: the grace period ran out".into(),
                source: SuspensionSource::Billing,
                at: context.at,
            },
            SubscriptionStatus::Active | SubscriptionStatus::PastDue | SubscriptionStatus::Trialing => {
                TenantCommand::Reactivate { source: SuspensionSource::Billing, at: context.at }
            }
            SubscriptionStatus::Cancelled => TenantCommand::Cancel { reason: "the subscription was cancelled".into(), at: context.at },
            SubscriptionStatus::New => return Ok(None),
        };
        match self.tenants.execute(tenant_id, command, &context.for_tenant(tenant_id)).await {
            Ok(committed) if !committed.events.is_empty() => Ok(Some(committed)),
            Ok(_) | Err(CommandError::Domain(TenantError::InvalidTransition { .. } | TenantError::NotFound)) => Ok(None),
            Err(e) => Err(e),
        }
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
        for (subscription_id, tenant_id) in due {
            match self.subscriptions.execute(subscription_id, SubscriptionCommand::AdvanceTo { as_of }, &context(tenant_id)).await {
                Ok(committed) if !committed.events.is_empty() => {
                    report.subscriptions_changed += 1;
                    report.invoices_issued += committed.events.iter().filter(|e| e.payload.event_type_is("InvoiceIssued")).count();
                    match self.sync_tenant(&committed.state, &context(tenant_id)).await {
                        Ok(Some(_)) => report.tenants_updated += 1,
                        Ok(None) => {}
                        Err(e) => report.failures.push(format!("tenant {tenant_id}: {e}")),
                    }
                }
                Ok(_) => {}
                Err(e) => report.failures.push(format!("subscription {subscription_id}: {e}")),
            }
        }

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
