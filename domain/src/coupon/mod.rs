//! Coupons: a platform-wide promotion a tenant redeems on its subscription. One stream per
//! coupon code, created once. The discount itself lives on the subscription (it is a fact of
//! the invoices it lowers); how many subscriptions redeemed a coupon is counted atomically with
//! the subscription's `CouponApplied` append, so `max_redemptions` holds under any concurrency.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::billing::money::round_cents;
use crate::{Rejection, RejectionKind, ValidationError};

/// How long a coupon's discount lasts once redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::CouponDuration))]
#[serde(rename_all = "snake_case")]
pub enum CouponDuration {
    /// The next invoice.
    Once,
    /// The next `duration_in_periods` invoices.
    Repeating,
    /// Every invoice until it is removed.
    Forever,
}

/// What a coupon takes off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::CouponValue))]
#[serde(rename_all = "snake_case")]
pub enum CouponValue {
    /// A percentage (0 < p ≤ 100, at most two decimals) of the invoice's other lines.
    PercentOff(Decimal),
    /// A fixed amount in `currency`.
    AmountOff {
        /// The amount.
        amount: Decimal,
        /// Its currency (the tenant's must match).
        currency: String,
    },
}

/// A coupon's terms, as created and as a subscription redeemed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::CouponTerms))]
pub struct CouponTerms {
    /// Its code (`[A-Za-z0-9_-]{3,50}`, unique).
    pub code: String,
    /// What it takes off.
    pub value: CouponValue,
    /// How long.
    pub duration: CouponDuration,
    /// For `repeating`: how many invoices.
    pub duration_in_periods: Option<u32>,
    /// How many subscriptions may redeem it in all (`None`: any number).
    pub max_redemptions: Option<u32>,
    /// The last instant it can be redeemed (`None`: any time).
    pub redeem_by: Option<DateTime<Utc>>,
    /// The plans it applies to (empty: every plan).
    pub plans: Vec<String>,
}

impl CouponTerms {
    /// Checks a definition: the code's form, one value, the duration's length.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ValidationError> {
        let code_ok = (3..=50).contains(&self.code.len()) && self.code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !code_ok {
            return Err(ValidationError::new("code", "must be 3 to 50 letters, digits, '-' or '_'"));
        }
        match &self.value {
            CouponValue::PercentOff(p) => {
                if *p <= Decimal::ZERO || *p > Decimal::ONE_HUNDRED || p.normalize().scale() > 2 {
                    return Err(ValidationError::new("percent_off", "must be more than 0 and at most 100, with at most two decimals"));
                }
            }
            CouponValue::AmountOff { amount, currency } => {
                if *amount <= Decimal::ZERO || amount.normalize().scale() > 2 || *amount > Decimal::from(1_000_000_000) {
                    return Err(ValidationError::new("amount_off", "must be a positive amount with at most two decimals"));
                }
                if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(ValidationError::new("currency", "must be an ISO 4217 code such as \"EUR\""));
                }
            }
        }
        match (self.duration, self.duration_in_periods) {
            (CouponDuration::Repeating, Some(n)) if (1..=120).contains(&n) => {}
            (CouponDuration::Repeating, _) => {
                return Err(ValidationError::new("duration_in_periods", "a repeating coupon needs 1 to 120 periods"));
            }
            (_, Some(_)) => return Err(ValidationError::new("duration_in_periods", "only a repeating coupon has a number of periods")),
            (_, None) => {}
        }
        if self.max_redemptions == Some(0) {
            return Err(ValidationError::new("max_redemptions", "must be at least 1"));
        }
        if self.redeem_by.is_some_and(|t| t <= now) {
            return Err(ValidationError::new("redeem_by", "must be in the future"));
        }
        Ok(())
    }

    /// How many invoices the discount lasts (`None`: forever).
    pub fn invoices(&self) -> Option<u32> {
        match self.duration {
            CouponDuration::Once => Some(1),
            CouponDuration::Repeating => self.duration_in_periods,
            CouponDuration::Forever => None,
        }
    }

    /// Why a subscription on `plan` billed in `currency` cannot redeem it at `at`, if it cannot
    /// (exhaustion is counted where the redemption is written).
    /// The reason is `expired`, `plan` or `currency`.
    pub fn refusal(&self, plan: &str, currency: &str, at: DateTime<Utc>) -> Option<(&'static str, String)> {
        if self.redeem_by.is_some_and(|by| at > by) {
            let by = self.redeem_by.expect("checked").to_rfc3339();
            return Some(("expired", format!("the coupon {} could be redeemed until {by}", self.code)));
        }
        if !self.plans.is_empty() && !self.plans.iter().any(|p| p == plan) {
            return Some(("plan", format!("the coupon {} applies to the plans {} only", self.code, self.plans.join(", "))));
        }
        if let CouponValue::AmountOff { currency: own, .. } = &self.value {
            if own != currency {
                return Some(("currency", format!("the coupon {} is in {own}, the subscription is billed in {currency}", self.code)));
            }
        }
        None
    }

    /// The discount on invoice lines summing to `sum`: never more than the sum, nothing on a
    /// sum that is not positive.
    pub fn discount(&self, sum: Decimal) -> Decimal {
        if sum <= Decimal::ZERO {
            return Decimal::ZERO;
        }
        let off = match &self.value {
            CouponValue::PercentOff(p) => round_cents(sum * p / Decimal::ONE_HUNDRED),
            CouponValue::AmountOff { amount, .. } => *amount,
        };
        off.min(sum)
    }

    /// For invoice lines.
    pub fn describe(&self) -> String {
        match &self.value {
            CouponValue::PercentOff(p) => format!("Coupon {}: {}% off", self.code, p.normalize()),
            CouponValue::AmountOff { amount, currency } => {
                format!("Coupon {}: {} {currency} off", self.code, crate::billing::money::format(*amount))
            }
        }
    }
}

/// The Coupon aggregate: its terms once created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Coupon))]
pub struct Coupon {
    /// The terms.
    pub terms: Option<CouponTerms>,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
}

/// Coupon commands.
#[derive(Debug, Clone)]
pub enum CouponCommand {
    /// Create it.
    Create {
        /// Its terms.
        terms: CouponTerms,
        /// When.
        at: DateTime<Utc>,
    },
}

/// Coupon events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CouponEvent {
    /// A coupon was created.
    CouponCreated {
        /// Its terms.
        terms: CouponTerms,
        /// When.
        created_at: DateTime<Utc>,
    },
}

impl DomainEvent for CouponEvent {
    fn event_type(&self) -> String {
        "CouponCreated".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a coupon command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The code is taken.
    #[error("a coupon with this code exists already")]
    AlreadyExists,
}

impl Rejection for CouponError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::AlreadyExists => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::AlreadyExists => "CONFLICT",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Invalid(e) => e.details(),
            Self::AlreadyExists => {
                let mut details = serde_json::Map::new();
                details.insert("field".into(), "code".into());
                details
            }
        }
    }
}

impl Aggregate for Coupon {
    const TYPE: &'static str = "Coupon";
    type Command = CouponCommand;
    type Event = CouponEvent;
    type Error = CouponError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            CouponCommand::Create { terms, at } => {
                if self.terms.is_some() {
                    return Err(CouponError::AlreadyExists);
                }
                terms.validate(at)?;
                sink.write(CouponEvent::CouponCreated { terms, created_at: at }, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CouponEvent::CouponCreated { terms, created_at } => {
                self.terms = Some(terms);
                self.created_at = Some(created_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn terms(value: CouponValue) -> CouponTerms {
        CouponTerms {
            code: "SPRING".into(),
            value,
            duration: CouponDuration::Once,
            duration_in_periods: None,
            max_redemptions: None,
            redeem_by: None,
            plans: Vec::new(),
        }
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_discount_is_a_percentage_or_an_amount_never_more_than_the_lines() {
        let pct = terms(CouponValue::PercentOff(d("25")));
        assert_eq!(pct.discount(d("29.00")).to_string(), "7.25");
        assert_eq!(pct.discount(d("0.02")).to_string(), "0.01", "0.005 rounds half up");
        let amount = terms(CouponValue::AmountOff { amount: d("50.00"), currency: "EUR".into() });
        assert_eq!(amount.discount(d("29.00")), d("29.00"), "never below zero");
        assert_eq!(amount.discount(d("79.00")), d("50.00"));
        assert_eq!(amount.discount(d("-5.00")), Decimal::ZERO);
    }

    #[test]
    fn definitions_and_redemptions_are_refused_with_a_reason() {
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let mut t = terms(CouponValue::PercentOff(d("150")));
        assert_eq!(t.validate(now).unwrap_err().field, "percent_off");
        t.value = CouponValue::PercentOff(d("10"));
        t.duration = CouponDuration::Repeating;
        assert_eq!(t.validate(now).unwrap_err().field, "duration_in_periods");
        t.duration_in_periods = Some(3);
        t.redeem_by = Some(now + chrono::Duration::days(10));
        t.plans = vec!["starter".into()];
        assert!(t.validate(now).is_ok());
        assert_eq!(t.invoices(), Some(3));
        assert!(t.refusal("starter", "EUR", now).is_none());
        assert!(t.refusal("business", "EUR", now).is_some_and(|(reason, message)| reason == "plan" && message.contains("starter")));
        assert!(t.refusal("starter", "EUR", now + chrono::Duration::days(11)).is_some());
        let usd = terms(CouponValue::AmountOff { amount: d("5"), currency: "USD".into() });
        assert!(usd.refusal("starter", "EUR", now).is_some());
        t.code = "x".into();
        assert_eq!(t.validate(now).unwrap_err().field, "code");
    }

    proptest! {
        #[test]
        fn a_discount_never_makes_an_invoice_negative(sum in -100_000i64..10_000_000, pct in 1i64..=10_000, amount in 1i64..10_000_000) {
            let sum = Decimal::new(sum, 2);
            for value in [CouponValue::PercentOff(Decimal::new(pct, 2)), CouponValue::AmountOff { amount: Decimal::new(amount, 2), currency: "EUR".into() }] {
                let off = terms(value).discount(sum);
                prop_assert!(off >= Decimal::ZERO);
                prop_assert!(sum - off >= Decimal::ZERO || sum < Decimal::ZERO);
                prop_assert!(off <= sum.max(Decimal::ZERO));
                prop_assert_eq!(off.scale(), off.scale().min(2));
            }
        }
    }
}
