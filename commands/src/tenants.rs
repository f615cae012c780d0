//! Tenant commands: sign-up (with its owner key), lifecycle, branding and API keys.

use domain::plan::{BillingPeriod, Plan, PlanCode};
use domain::tenant::{ApiKeyRole, NewApiKey, NewTenant, Tenant, TenantCommand, TenantError};
use domain::values::{BusinessType, CurrencyCode, DisplayName, Email, Locale, TaxRate, TenantCode, TimeZoneName};
use uuid::Uuid;

use crate::store::Decided;
use crate::vault::Vault;
use crate::{api_keys, AggregateStore, CommandContext, CommandError, Committed};

/// A validated sign-up request.
#[derive(Debug, Clone)]
pub struct SignUp {
    /// Unique code.
    pub code: TenantCode,
    /// Display name.
    pub name: DisplayName,
    /// Vertical.
    pub business_type: BusinessType,
    /// Home time zone.
    pub timezone: TimeZoneName,
    /// Billing currency.
    pub currency: CurrencyCode,
    /// Document language.
    pub locale: Locale,
    /// Invoice address.
    pub billing_email: Email,
    /// Plan code.
    pub plan: PlanCode,
    /// Billing period.
    pub billing_period: BillingPeriod,
    /// Trial days.
    pub trial_days: u32,
    /// Tax rate.
    pub tax_rate: TaxRate,
    /// Days after issue an invoice is due (kept by the subscription).
    pub net_terms_days: u32,
}

/// A key as handed out once: its id and secret.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The key's id.
    pub key_id: Uuid,
    /// The secret; never stored, never shown again.
    pub secret: String,
}

/// A sign-up ready to append ([`Tenants::prepare_sign_up`]).
#[derive(Debug)]
pub struct NewSignUp {
    /// The owner key, shown once.
    pub issued: IssuedKey,
    /// The new tenant's id.
    pub tenant_id: Uuid,
    /// Its subscription's id.
    pub subscription_id: Uuid,
    command: TenantCommand,
    context: CommandContext,
}

/// The tenant command service.
pub struct Tenants {
    store: AggregateStore<Tenant>,
    vault: Vault,
}

impl Tenants {
    /// Wraps the Tenant aggregate's store; `vault` seals personal data.
    pub fn new(store: AggregateStore<Tenant>, vault: Vault) -> Self {
        Self { store, vault }
    }

    /// The personal-data keys.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Prepares signing a tenant up on `plan` with its owner key: its ids, its personal-data
    /// key (created now, so it exists before anything sealed with it is durable) and its `Create`
    /// command. [`Self::decide`] decides it for an append together with its subscription's first
    /// events; [`Self::commit_alone`] appends it on its own. The code's uniqueness is enforced by
    /// the event store in the append's transaction (a taken code is a `StoreRejection` 409).
    pub async fn prepare_sign_up(
        &self,
        sign_up: SignUp,
        plan: &Plan,
        context: &CommandContext,
    ) -> Result<NewSignUp, CommandError<TenantError>> {
        let tenant_id = Uuid::now_v7();
        let subscription_id = Uuid::now_v7();
        let (owner_key, issued) = new_key("owner", ApiKeyRole::Owner, None, context);
        let key = self.vault.key_for_new_tenant(tenant_id).await.map_err(|e| CommandError::Internal(e.to_string()))?;
        let billing_email = key.seal(sign_up.billing_email.as_str()).map_err(|e| CommandError::Internal(e.to_string()))?;
        let new = NewTenant {
            tenant_id,
            code: sign_up.code,
            name: sign_up.name,
            business_type: sign_up.business_type,
            timezone: sign_up.timezone,
            currency: sign_up.currency,
            locale: sign_up.locale,
            billing_email,
            plan: plan.code.clone(),
            plan_version: plan.version,
            billing_period: sign_up.billing_period,
            trial_days: sign_up.trial_days,
            tax_rate: sign_up.tax_rate,
            subscription_id,
            owner_key,
            at: context.at,
        };
        Ok(NewSignUp {
            issued,
            tenant_id,
            subscription_id,
            command: TenantCommand::Create(Box::new(new)),
            context: context.for_tenant(tenant_id),
        })
    }

    /// Decides a prepared sign-up on the new tenant's empty stream, without appending it.
    pub async fn decide(&self, sign_up: &NewSignUp) -> Result<Decided<Tenant>, CommandError<TenantError>> {
        self.store
            .decide_new(&sign_up.tenant_id.to_string(), sign_up.command.clone(), &sign_up.context)
            .await?
            .ok_or_else(|| CommandError::Internal("a sign-up appended nothing".into()))
    }

    /// Appends a prepared sign-up on its own (a new id: without loading first; the store decides
    /// again if it exists).
    pub async fn commit_alone(&self, sign_up: &NewSignUp) -> Result<Committed<Tenant>, CommandError<TenantError>> {
        self.store.execute_new(&sign_up.tenant_id.to_string(), sign_up.command.clone(), &sign_up.context).await
    }

    /// The Tenant aggregate's store.
    pub fn store(&self) -> &AggregateStore<Tenant> {
        &self.store
    }

    /// Issues another key for `tenant_id`; `issued_by` is the caller's role (`None`: admin).
    pub async fn issue_key(
        &self,
        tenant_id: Uuid,
        name: DisplayName,
        role: ApiKeyRole,
        issued_by: Option<ApiKeyRole>,
        context: &CommandContext,
    ) -> Result<(IssuedKey, Committed<Tenant>), CommandError<TenantError>> {
        let (key, issued) = new_key(name.as_str(), role, issued_by, context);
        let committed = self.execute(tenant_id, TenantCommand::IssueApiKey(key), context).await?;
        Ok((issued, committed))
    }

    /// Runs any other tenant command.
    pub async fn execute(
        &self,
        tenant_id: Uuid,
        command: TenantCommand,
        context: &CommandContext,
    ) -> Result<Committed<Tenant>, CommandError<TenantError>> {
        self.store.execute(&tenant_id.to_string(), command, context).await
    }

    /// The tenant aggregate's current state.
    pub async fn load(&self, tenant_id: Uuid) -> Result<Option<Tenant>, CommandError<TenantError>> {
        Ok(self.store.load(&tenant_id.to_string()).await?.map(|(state, _)| state))
    }
}

fn new_key(name: &str, role: ApiKeyRole, issued_by: Option<ApiKeyRole>, context: &CommandContext) -> (NewApiKey, IssuedKey) {
    let generated = api_keys::generate();
    let key_id = Uuid::now_v7();
    let name = DisplayName::parse(name, "name").unwrap_or_else(|_| DisplayName::parse("key", "name").expect("a constant name is valid"));
    let key = NewApiKey { key_id, name, role, key_hash: generated.hash, key_prefix: generated.display_prefix, issued_by, at: context.at };
    (key, IssuedKey { key_id, secret: generated.secret })
}
