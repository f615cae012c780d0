//! Work that spans aggregates: signing a tenant up (tenant + subscription), payment
//! notifications, erasure, and keeping a tenant's status in line with its subscription. The
//! billing run, the largest such process, has its own file ([`crate::billing_run`]).
//!
//! Each step is its own transaction on its own aggregate, so a crash can leave a step undone
//! (a tenant without its subscription, a suspended subscription whose tenant is still active).
//! The billing run repairs exactly those cases every time it runs, so the system converges.

use std::sync::Arc;

use domain::plan::Plan;
use domain::subscription::{
    PaymentOutcome, PlanTerms, StartSubscription, Subscription, SubscriptionCommand, SubscriptionError, SubscriptionStatus,
};
use domain::tenant::{SuspensionSource, Tenant, TenantCommand, TenantError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::store::{append_together, Together};
use crate::subscriptions::Subscriptions;
use crate::tenants::{IssuedKey, SignUp, Tenants};
use crate::{CommandContext, CommandError, Committed};

/// The cross-aggregate service.
pub struct Accounts {
    pub(crate) pool: PgPool,
    catalog: Arc<Catalog>,
    tenants: Arc<Tenants>,
    pub(crate) subscriptions: Arc<Subscriptions>,
    /// Subscriptions a billing run advances at once.
    pub(crate) billing_concurrency: usize,
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
    pub fn new(pool: PgPool, catalog: Arc<Catalog>, tenants: Arc<Tenants>, subscriptions: Arc<Subscriptions>) -> Self {
        Self { pool, catalog, tenants, subscriptions, billing_concurrency: 64 }
    }

    /// Advances `n` (at least 1) subscriptions at once in a billing run.
    pub fn with_billing_concurrency(mut self, n: usize) -> Self {
        self.billing_concurrency = n.max(1);
        self
    }

    /// The subscriptions' command service.
    pub fn subscriptions(&self) -> &Subscriptions {
        &self.subscriptions
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Signs a tenant up on the latest version of `plan` and opens its subscription: the
    /// tenant's and the subscription's first events in one append (one statement and commit,
    /// all or nothing). Should either stream exist after all (it never does: the ids are new),
    /// the two are appended one after the other, each decided on its real state.
    pub async fn sign_up(&self, sign_up: SignUp, plan: &Plan, context: &CommandContext) -> Result<SignedUp, CommandError<TenantError>> {
        let started = std::time::Instant::now();
        // A plan not sold in the tenant's currency is refused before anything is recorded.
        let terms = PlanTerms::in_currency(plan, sign_up.currency.as_str()).map_err(|e| CommandError::Domain(TenantError::Invalid(e)))?;
        let prepared = self.tenants.prepare_sign_up(sign_up.clone(), plan, context).await?;
        let (tenant_id, subscription_id) = (prepared.tenant_id, prepared.subscription_id);
        let start = || {
            SubscriptionCommand::Start(Box::new(StartSubscription {
                subscription_id,
                tenant_id,
                tenant_code: sign_up.code.to_string(),
                currency: sign_up.currency.to_string(),
                tax_rate: sign_up.tax_rate,
                plan: terms.clone(),
                billing_period: sign_up.billing_period,
                trial_days: sign_up.trial_days,
                net_terms_days: sign_up.net_terms_days,
                at: context.at,
            }))
        };
        let as_tenant_error = |e: CommandError<SubscriptionError>| {
            e.map_domain(|e| TenantError::Invalid(domain::ValidationError::new("subscription", e.to_string())))
        };
        let tenant = self.tenants.decide(&prepared).await?;
        let subscription_context = context.for_tenant(tenant_id);
        let subscription = self
            .subscriptions
            .decide_new(subscription_id, start(), &subscription_context)
            .await
            .map_err(as_tenant_error)?
            .ok_or_else(|| CommandError::Internal("a subscription's start appended nothing".into()))?;
        let mut rows = tenant.rows().to_vec();
        rows.extend_from_slice(subscription.rows());
        let opened = subscription.len() as i64;
        match append_together::<TenantError>(self.tenants.store().appender(), rows).await? {
            Together::At(position) => Ok(SignedUp {
                key: prepared.issued,
                tenant: self.tenants.store().committed(tenant, position - opened, started),
                subscription: self.subscriptions.store().committed(subscription, position, started),
            }),
            Together::Refused(refusal) => Err(refusal),
            Together::Conflict => {
                let tenant = self.tenants.commit_alone(&prepared).await?;
                let subscription =
                    self.subscriptions.execute_new(subscription_id, start(), &subscription_context).await.map_err(as_tenant_error)?;
                Ok(SignedUp { key: prepared.issued, tenant, subscription })
            }
        }
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
}
