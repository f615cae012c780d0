use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiKeyRole, SuspensionSource};
use crate::plan::{BillingPeriod, PlanCode};
use crate::values::{
    BusinessType, CurrencyCode, DisplayName, DomainName, HexColor, HttpsUrl, Locale, Sealed, TaxRate, TenantCode, TimeZoneName,
};

/// What happened to a tenant. Facts, in the past tense, carrying everything a reader of the
/// log needs without joining anything. Stored internally tagged (`{"type": "TenantCreated",
/// ...}`) so that SQL can read fields directly. Never reshape one in place: add a version
/// and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum TenantEvent {
    /// A tenant signed up.
    TenantCreated {
        /// Its id.
        tenant_id: Uuid,
        /// Its unique code.
        code: TenantCode,
        /// Display name.
        name: DisplayName,
        /// Vertical.
        business_type: BusinessType,
        /// Home time zone.
        timezone: TimeZoneName,
        /// Billing currency.
        currency: CurrencyCode,
        /// Document language.
        locale: Locale,
        /// Invoice address, sealed (personal data).
        billing_email: Sealed,
        /// Plan at sign-up.
        plan: PlanCode,
        /// That plan's version.
        plan_version: u32,
        /// Monthly or yearly.
        billing_period: BillingPeriod,
        /// Trial days granted.
        trial_days: u32,
        /// Tax rate in percent.
        tax_rate: TaxRate,
        /// The subscription opened with it.
        subscription_id: Uuid,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// The branding was replaced.
    BrandingUpdated {
        /// Main colour.
        primary_color: Option<HexColor>,
        /// Accent colour.
        secondary_color: Option<HexColor>,
        /// Logo.
        logo_url: Option<HttpsUrl>,
        /// Own host name.
        custom_domain: Option<DomainName>,
        /// When.
        updated_at: DateTime<Utc>,
    },
    /// The tenant was suspended.
    TenantSuspended {
        /// Why.
        reason: String,
        /// Who decided (added in 1.1; see `crate::upcasting`).
        source: SuspensionSource,
        /// When.
        suspended_at: DateTime<Utc>,
    },
    /// The tenant was reactivated.
    TenantReactivated {
        /// When.
        reactivated_at: DateTime<Utc>,
    },
    /// The tenant was cancelled for good.
    TenantCancelled {
        /// Why.
        reason: String,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
    /// The tenant's personal data was erased (its key destroyed); final.
    TenantErased {
        /// When.
        erased_at: DateTime<Utc>,
    },
    /// An API key was issued (only its hash is kept).
    ApiKeyIssued {
        /// Its id.
        key_id: Uuid,
        /// Its name.
        name: DisplayName,
        /// Its role.
        role: ApiKeyRole,
        /// SHA-256 of the secret, hex.
        key_hash: String,
        /// First characters of the secret.
        key_prefix: String,
        /// When.
        issued_at: DateTime<Utc>,
    },
    /// An API key was revoked.
    ApiKeyRevoked {
        /// Its id.
        key_id: Uuid,
        /// When.
        revoked_at: DateTime<Utc>,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TenantCreated { .. } => "TenantCreated",
            Self::BrandingUpdated { .. } => "BrandingUpdated",
            Self::TenantSuspended { .. } => "TenantSuspended",
            Self::TenantReactivated { .. } => "TenantReactivated",
            Self::TenantCancelled { .. } => "TenantCancelled",
            Self::TenantErased { .. } => "TenantErased",
            Self::ApiKeyIssued { .. } => "ApiKeyIssued",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        match self {
            Self::TenantSuspended { .. } => "1.1",
            _ => "1.0",
        }
        .to_owned()
    }
}
