use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ApiKeyRole, SuspensionSource, TenantEvent};
use crate::plan::{BillingPeriod, PlanCode};
use crate::values::{
    BusinessType, CurrencyCode, DisplayName, DomainName, HexColor, HttpsUrl, Locale, Sealed, TaxRate, TenantCode, TimeZoneName,
};

/// What can be asked of a tenant. Every instant comes in the command (`at`): the aggregate
/// never reads a clock.
#[derive(Debug, Clone)]
pub enum TenantCommand {
    /// Sign a new tenant up, with its owner key.
    Create(Box<NewTenant>),
    /// Replace the branding.
    UpdateBranding {
        /// The new branding (absent fields are cleared).
        branding: Branding,
        /// When.
        at: DateTime<Utc>,
    },
    /// Suspend an active tenant.
    Suspend {
        /// Why (shown to admins and in the audit trail).
        reason: String,
        /// Who decides.
        source: SuspensionSource,
        /// When.
        at: DateTime<Utc>,
    },
    /// Reactivate a suspended tenant. Billing may only lift a suspension billing imposed; for
    /// anything else its request changes nothing.
    Reactivate {
        /// Who decides.
        source: SuspensionSource,
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancel the tenant for good.
    Cancel {
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Record that the tenant's personal data was erased (its key destroyed). Final; erasing
    /// an erased tenant changes nothing.
    Erase {
        /// When.
        at: DateTime<Utc>,
    },
    /// Issue another API key.
    IssueApiKey(NewApiKey),
    /// Revoke a key; it stops working at once.
    RevokeApiKey {
        /// The key.
        key_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A validated sign-up.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// The new tenant's id.
    pub tenant_id: Uuid,
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
    /// Language for documents.
    pub locale: Locale,
    /// Where invoices go.
    pub billing_email: Sealed,
    /// The plan signed up for.
    pub plan: PlanCode,
    /// The plan's version at sign-up.
    pub plan_version: u32,
    /// Monthly or yearly billing.
    pub billing_period: BillingPeriod,
    /// Trial length in days (0 to 30).
    pub trial_days: u32,
    /// Tax rate in percent.
    pub tax_rate: TaxRate,
    /// The id of the subscription opened with the tenant.
    pub subscription_id: Uuid,
    /// The owner key handed out once in the response.
    pub owner_key: NewApiKey,
    /// When.
    pub at: DateTime<Utc>,
}

impl NewTenant {
    pub(super) fn created_event(&self) -> TenantEvent {
        TenantEvent::TenantCreated {
            tenant_id: self.tenant_id,
            code: self.code.clone(),
            name: self.name.clone(),
            business_type: self.business_type.clone(),
            timezone: self.timezone.clone(),
            currency: self.currency.clone(),
            locale: self.locale.clone(),
            billing_email: self.billing_email.clone(),
            plan: self.plan.clone(),
            plan_version: self.plan_version,
            billing_period: self.billing_period,
            trial_days: self.trial_days,
            tax_rate: self.tax_rate,
            subscription_id: self.subscription_id,
            created_at: self.at,
        }
    }
}

/// A key to issue. Only the hash of the secret reaches the aggregate.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The key's id.
    pub key_id: Uuid,
    /// A name for people (`"reception desk"`).
    pub name: DisplayName,
    /// Its role.
    pub role: ApiKeyRole,
    /// SHA-256 of the secret, hex.
    pub key_hash: String,
    /// The first characters of the secret, to recognise it in lists.
    pub key_prefix: String,
    /// The role of the key asking for it; `None` for the platform admin.
    pub issued_by: Option<ApiKeyRole>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A tenant's branding; `None` fields are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branding {
    /// Main colour.
    pub primary_color: Option<HexColor>,
    /// Accent colour.
    pub secondary_color: Option<HexColor>,
    /// Logo location.
    pub logo_url: Option<HttpsUrl>,
    /// The tenant's own host name for its booking pages.
    pub custom_domain: Option<DomainName>,
}
