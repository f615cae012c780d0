//! The Tenant aggregate: a customer of the platform (a clinic, a law firm, a school), its
//! profile, branding, lifecycle status and API keys.
//!
//! Lifecycle: created `active` → `suspended` (by an admin, or by billing when a payment stays
//! overdue) → `active` again on reactivation; `cancelled` is final. The platform-wide
//! uniqueness of the tenant code is not the aggregate's to check (it sees one tenant): the
//! event store enforces it atomically when `TenantCreated` is appended.

mod api_key;
mod commands;
mod error;
mod events;

pub use api_key::ApiKeyRole;
pub use commands::{Branding, NewApiKey, NewTenant, TenantCommand};
pub use error::TenantError;
pub use events::TenantEvent;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ValidationError;

/// The longest trial a tenant can be given, in days.
pub const MAX_TRIAL_DAYS: u32 = 30;

/// The trial a tenant gets when the sign-up names none, in days.
pub const DEFAULT_TRIAL_DAYS: u32 = 14;

/// Where a tenant is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::TenantStatus))]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// Not created yet (the state of an empty stream).
    #[default]
    New,
    /// May use the platform.
    Active,
    /// Commands are refused with 402 until reactivated; reads still work.
    Suspended,
    /// Final: commands are refused with 403.
    Cancelled,
    /// Final, and its personal data was erased: commands are refused with 403.
    Erased,
}

impl TenantStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Cancelled => "cancelled",
            Self::Erased => "erased",
        }
    }
}

/// Who suspended a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::SuspensionSource))]
#[serde(rename_all = "snake_case")]
pub enum SuspensionSource {
    /// The platform admin.
    #[default]
    Admin,
    /// Billing: the grace period of a failed payment ran out.
    Billing,
}

/// What the aggregate remembers of an API key: enough to refuse a second revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::KeyState))]
pub struct KeyState {
    /// The key's role.
    pub role: ApiKeyRole,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The Tenant aggregate's state, folded from its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Tenant))]
pub struct Tenant {
    /// The tenant's id (the aggregate id), once created.
    pub id: Option<Uuid>,
    /// The tenant's code.
    pub code: Option<String>,
    /// Lifecycle status.
    pub status: TenantStatus,
    /// API keys by id.
    pub api_keys: BTreeMap<Uuid, KeyState>,
    /// The subscription opened with the tenant.
    pub subscription_id: Option<Uuid>,
    /// Who suspended it, while suspended.
    pub suspended_by: Option<SuspensionSource>,
}

impl Tenant {
    fn require_created(&self) -> Result<(), TenantError> {
        match self.status {
            TenantStatus::New => Err(TenantError::NotFound),
            _ => Ok(()),
        }
    }

    fn refuse_if_cancelled(&self, action: &'static str) -> Result<(), TenantError> {
        self.require_created()?;
        if matches!(self.status, TenantStatus::Cancelled | TenantStatus::Erased) {
            return Err(TenantError::InvalidTransition { action, status: self.status });
        }
        Ok(())
    }

    fn issue_key(&self, key: NewApiKey) -> Result<TenantEvent, TenantError> {
        if let Some(issuer) = key.issued_by {
            if !issuer.may_issue(key.role) {
                return Err(TenantError::RoleNotGrantable { issuer, role: key.role });
            }
        }
        if self.api_keys.contains_key(&key.key_id) {
            return Err(TenantError::KeyAlreadyExists);
        }
        Ok(TenantEvent::ApiKeyIssued {
            key_id: key.key_id,
            name: key.name,
            role: key.role,
            key_hash: key.key_hash,
            key_prefix: key.key_prefix,
            issued_at: key.at,
        })
    }

    fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        use TenantStatus::{Active, Cancelled, Erased, New, Suspended};
        match command {
            TenantCommand::Create(new) => {
                if self.status != New {
                    return Err(TenantError::AlreadyExists);
                }
                if new.trial_days > MAX_TRIAL_DAYS {
                    return Err(ValidationError::new("trial_days", format!("must be between 0 and {MAX_TRIAL_DAYS}")).into());
                }
                let owner_key = self.issue_key(new.owner_key.clone())?;
                Ok(vec![new.created_event(), owner_key])
            }
            TenantCommand::UpdateBranding { branding, at } => {
                self.refuse_if_cancelled("update the branding of")?;
                Ok(vec![TenantEvent::BrandingUpdated {
                    primary_color: branding.primary_color,
                    secondary_color: branding.secondary_color,
                    logo_url: branding.logo_url,
                    custom_domain: branding.custom_domain,
                    updated_at: at,
                }])
            }
            TenantCommand::Suspend { reason, source, at } => match self.status {
                New => Err(TenantError::NotFound),
                Active => Ok(vec![TenantEvent::TenantSuspended { reason, source, suspended_at: at }]),
                Suspended | Cancelled | Erased => Err(TenantError::InvalidTransition { action: "suspend", status: self.status }),
            },
            TenantCommand::Reactivate { source: SuspensionSource::Billing, .. } if self.suspended_by != Some(SuspensionSource::Billing) => {
                Ok(vec![])
            }
            TenantCommand::Reactivate { at, .. } => match self.status {
                New => Err(TenantError::NotFound),
                Suspended => Ok(vec![TenantEvent::TenantReactivated { reactivated_at: at }]),
                Active | Cancelled | Erased => Err(TenantError::InvalidTransition { action: "reactivate", status: self.status }),
            },
            TenantCommand::Cancel { reason, at } => {
                self.refuse_if_cancelled("cancel")?;
                Ok(vec![TenantEvent::TenantCancelled { reason, cancelled_at: at }])
            }
            TenantCommand::Erase { at } => match self.status {
                New => Err(TenantError::NotFound),
                Erased => Ok(vec![]),
                Active | Suspended | Cancelled => Ok(vec![TenantEvent::TenantErased { erased_at: at }]),
            },
            TenantCommand::IssueApiKey(key) => {
                self.refuse_if_cancelled("issue an API key for")?;
                Ok(vec![self.issue_key(key)?])
            }
            TenantCommand::RevokeApiKey { key_id, at } => {
                self.require_created()?;
                match self.api_keys.get(&key_id) {
                    Some(KeyState { revoked_at: None, .. }) => Ok(vec![TenantEvent::ApiKeyRevoked { key_id, revoked_at: at }]),
                    _ => Err(TenantError::KeyNotFound),
                }
            }
        }
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "Tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TenantEvent::TenantCreated { tenant_id, code, subscription_id, .. } => {
                self.id = Some(tenant_id);
                self.code = Some(code.into_inner());
                self.subscription_id = Some(subscription_id);
                self.status = TenantStatus::Active;
            }
            TenantEvent::BrandingUpdated { .. } => {}
            TenantEvent::TenantSuspended { source, .. } => {
                self.status = TenantStatus::Suspended;
                self.suspended_by = Some(source);
            }
            TenantEvent::TenantReactivated { .. } => {
                self.status = TenantStatus::Active;
                self.suspended_by = None;
            }
            TenantEvent::TenantCancelled { .. } => self.status = TenantStatus::Cancelled,
            TenantEvent::TenantErased { .. } => self.status = TenantStatus::Erased,
            TenantEvent::ApiKeyIssued { key_id, role, .. } => {
                self.api_keys.insert(key_id, KeyState { role, revoked_at: None });
            }
            TenantEvent::ApiKeyRevoked { key_id, revoked_at } => {
                if let Some(key) = self.api_keys.get_mut(&key_id) {
                    key.revoked_at = Some(revoked_at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
