use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::values::string_value;
use crate::ValidationError;

string_value!(
    /// A plan's code (`starter`, `professional`, ...): `[a-z0-9-]{2,50}`.
    PlanCode
);

impl PlanCode {
    /// Parses a plan code's shape (whether such a plan exists is the catalog's question).
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok = (2..=50).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(ValidationError::new("plan", "must be a plan code such as \"starter\""));
        }
        Ok(Self(input.to_owned()))
    }
}

/// A plan's limits; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::PlanLimits))]
pub struct PlanLimits {
    /// Users (seats) of the tenant.
    pub users: Option<u64>,
    /// Confirmed bookings created per calendar month.
    pub bookings_per_month: Option<u64>,
    /// Resources of kind `event`.
    pub events: Option<u64>,
    /// Seats sold per event.
    pub tickets_per_event: Option<u64>,
    /// Stored data in MB.
    pub storage_mb: Option<u64>,
    /// API calls per month included in the price (beyond it: overage, not refusal).
    pub api_calls_per_month: Option<u64>,
}

/// A plan's prices in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Prices))]
pub struct Prices {
    /// Per month.
    pub monthly: Decimal,
    /// Per year.
    pub yearly: Decimal,
}

impl Plan {
    /// The prices in `currency`, if the plan is sold in it.
    pub fn prices_in(&self, currency: &str) -> Option<Prices> {
        self.sold_in().remove(currency)
    }

    /// Every currency the plan is sold in, with its prices.
    pub fn sold_in(&self) -> BTreeMap<String, Prices> {
        if self.prices.is_empty() {
            BTreeMap::from([(self.currency.clone(), Prices { monthly: self.monthly_price, yearly: self.yearly_price })])
        } else {
            self.prices.clone()
        }
    }
}

/// One version of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Plan))]
pub struct Plan {
    /// The plan's code.
    pub code: PlanCode,
    /// Its display name.
    pub name: String,
    /// Its version; published versions never change.
    pub version: u32,
    /// Price per month.
    pub monthly_price: Decimal,
    /// Price per year (10 × monthly in the default catalog).
    pub yearly_price: Decimal,
    /// The plan's first currency: `monthly_price` and `yearly_price` are its prices.
    pub currency: String,
    /// The prices per currency the plan is sold in (including the first). A tenant is billed in
    /// its own currency at that currency's price; a plan without one is not for it. Empty in
    /// versions published before plans had several currencies: then sold in `currency` only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<String, Prices>,
    /// Limits.
    pub limits: PlanLimits,
    /// Usage charges: how metrics' usage of a period is priced, in arrears (a charge on
    /// `api_calls` or `sms` replaces the built-in overage price of that metric).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<crate::billing::charges::Charge>,
    /// Feature flags shown to customers.
    pub features: Vec<String>,
    /// Tenant API requests per minute.
    pub rate_limit_per_minute: u32,
}

/// The contract's default catalog: starter, professional, business and enterprise, version 1.
pub fn default_catalog() -> Vec<Plan> {
    let plan = |code: &str, name: &str, monthly: i64, limits: [Option<u64>; 6], rate: u32, features: &[&str]| Plan {
        code: PlanCode(code.to_owned()),
        name: name.to_owned(),
        version: 1,
        monthly_price: Decimal::new(monthly * 100, 2),
        yearly_price: Decimal::new(monthly * 1000, 2),
        currency: "EUR".to_owned(),
        // Sold in EUR and USD at the same figures.
        prices: ["EUR", "USD"]
            .map(|c| (c.to_owned(), Prices { monthly: Decimal::new(monthly * 100, 2), yearly: Decimal::new(monthly * 1000, 2) }))
            .into(),
        limits: PlanLimits {
            users: limits[0],
            bookings_per_month: limits[1],
            events: limits[2],
            tickets_per_event: limits[3],
            storage_mb: limits[4],
            api_calls_per_month: limits[5],
        },
        // The API-call overage, as a package charge (enterprise has no allowance, so none).
        charges: limits[5].map(crate::billing::charges::Charge::api_call_overage).into_iter().collect(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        rate_limit_per_minute: rate,
    };
    vec![
        plan("starter", "Starter", 29, [Some(3), Some(100), Some(5), Some(50), Some(1024), Some(10_000)], 200, &["bookings", "events"]),
        plan(
            "professional",
            "Professional",
            79,
            [Some(10), Some(500), Some(25), Some(200), Some(5120), Some(50_000)],
            500,
            &["bookings", "events", "branding"],
        ),
        plan(
            "business",
            "Business",
            199,
            [Some(50), Some(2000), Some(100), Some(1000), Some(20480), Some(200_000)],
            1000,
            &["bookings", "events", "branding", "custom_domain"],
        ),
        plan(
            "enterprise",
            "Enterprise",
            499,
            [None, None, None, None, Some(102_400), None],
            5000,
            &["bookings", "events", "branding", "custom_domain", "sso"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_matches_the_contract() {
        let catalog = default_catalog();
        let prices: Vec<String> = catalog.iter().map(|p| p.monthly_price.to_string()).collect();
        assert_eq!(prices, ["29.00", "79.00", "199.00", "499.00"]);
        for plan in &catalog {
            assert_eq!(plan.yearly_price, plan.monthly_price * Decimal::TEN);
        }
        assert_eq!(catalog[3].limits.users, None);
        assert_eq!(catalog[3].limits.storage_mb, Some(102_400));
    }
}
