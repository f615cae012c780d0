//! The plan catalog: what a tenant can subscribe to, at what price and with which limits.

mod aggregate;
mod catalog;

pub use aggregate::{PlanCommand, PlanError, PlanEvent, PlanVersions};

pub use catalog::{default_catalog, Plan, PlanCode, PlanLimits, Prices};

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// How often a subscription is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::BillingPeriod))]
#[serde(rename_all = "lowercase")]
pub enum BillingPeriod {
    /// Every month on the anchor day.
    Monthly,
    /// Every year on the anchor date; costs 10 × the monthly price.
    Yearly,
}

impl BillingPeriod {
    /// Parses `monthly` or `yearly`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        match input {
            "monthly" => Ok(Self::Monthly),
            "yearly" => Ok(Self::Yearly),
            _ => Err(ValidationError::new("billing_period", "must be \"monthly\" or \"yearly\"")),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }
}
