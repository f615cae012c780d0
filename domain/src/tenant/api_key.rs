use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// What a tenant API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::ApiKeyRole))]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyRole {
    /// Everything, including issuing owner keys.
    Owner,
    /// Everything but issuing owner keys.
    Admin,
    /// Day-to-day commands (bookings, usage) and reads.
    Member,
    /// Reads only (`GET`).
    Readonly,
}

impl ApiKeyRole {
    /// Parses `owner`, `admin`, `member` or `readonly`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "owner" => Ok(Self::Owner),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            "readonly" => Ok(Self::Readonly),
            _ => Err(ValidationError::new("role", "must be one of \"owner\", \"admin\", \"member\", \"readonly\"")),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Readonly => "readonly",
        }
    }

    /// Whether a key of this role may issue (and manage) keys of `role`: owners any, admins
    /// any but owner, the others none.
    pub fn may_issue(self, role: ApiKeyRole) -> bool {
        match self {
            Self::Owner => true,
            Self::Admin => role != Self::Owner,
            Self::Member | Self::Readonly => false,
        }
    }

    /// Whether the role may change anything at all.
    pub fn may_write(self) -> bool {
        self != Self::Readonly
    }
}
