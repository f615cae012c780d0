use serde_json::{Map, Value};

use super::{ApiKeyRole, TenantStatus};
use crate::{Rejection, RejectionKind, ValidationError};

/// Why a tenant command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The command's input breaks a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The tenant does not exist.
    #[error("tenant not found")]
    NotFound,
    /// A tenant with this id exists already.
    #[error("the tenant exists already")]
    AlreadyExists,
    /// The command does not apply in the tenant's current status.
    #[error("cannot {action} a tenant that is {}", status.as_str())]
    InvalidTransition {
        /// What was attempted.
        action: &'static str,
        /// The status that forbids it.
        status: TenantStatus,
    },
    /// No active key with that id.
    #[error("no active API key with that id")]
    KeyNotFound,
    /// A key id was reused.
    #[error("an API key with that id exists already")]
    KeyAlreadyExists,
    /// The issuing key's role may not grant that role.
    #[error("a key with role {} may not issue keys with role {}", issuer.as_str(), role.as_str())]
    RoleNotGrantable {
        /// The issuer's role.
        issuer: ApiKeyRole,
        /// The role asked for.
        role: ApiKeyRole,
    },
}

impl Rejection for TenantError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(e) => e.kind(),
            Self::NotFound | Self::KeyNotFound => RejectionKind::NotFound,
            Self::AlreadyExists | Self::InvalidTransition { .. } | Self::KeyAlreadyExists => RejectionKind::Conflict,
            Self::RoleNotGrantable { .. } => RejectionKind::Forbidden,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::NotFound | Self::KeyNotFound => "NOT_FOUND",
            Self::AlreadyExists | Self::KeyAlreadyExists => "CONFLICT",
            Self::InvalidTransition { .. } => "INVALID_STATE_TRANSITION",
            Self::RoleNotGrantable { .. } => "FORBIDDEN",
        }
    }

    fn details(&self) -> Map<String, Value> {
        if let Self::Invalid(e) = self {
            return e.details();
        }
        let mut details = Map::new();
        if let Self::InvalidTransition { status, .. } = self {
            details.insert("status".into(), Value::String(status.as_str().into()));
        }
        details
    }
}
