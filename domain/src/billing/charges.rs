//! Usage charges: how a plan prices a metric's usage of a period, in the models billing systems
//! share (Lago's and Stripe's names): per unit, per package, graduated and volume tiers, each
//! after `included` free units. Each line is rounded half away from zero to the cent once.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::invoice::{InvoiceLine, LineKind};
use super::money::round_cents;
use crate::ValidationError;

/// One tier: the units up to `up_to` (inclusive; `None` on the last tier) after the previous
/// tier's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Tier))]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The last unit of the tier (counted from the first billable unit); `None`: no end.
    pub up_to: Option<u64>,
    /// Price per unit.
    pub unit_price: Decimal,
    /// Added once when any unit falls in the tier.
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// How the billable units are priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Model))]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Model {
    /// `units × unit_price`.
    PerUnit {
        /// Price per unit.
        unit_price: Decimal,
    },
    /// `ceil(units / package_size) × package_price`.
    Package {
        /// Units per package.
        package_size: u64,
        /// Price per started package.
        package_price: Decimal,
    },
    /// Each unit at the price of the tier it falls in, plus each used tier's flat fee.
    Graduated {
        /// The tiers, in order.
        tiers: Vec<Tier>,
    },
    /// Every unit at the price of the tier the total falls in, plus that tier's flat fee.
    Volume {
        /// The tiers, in order.
        tiers: Vec<Tier>,
    },
}

/// A plan's price for one metric's usage of a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Charge))]
pub struct Charge {
    /// The metric priced.
    pub metric: String,
    /// Free units per period.
    #[serde(default)]
    pub included: u64,
    /// The model and its figures.
    #[serde(flatten)]
    pub model: Model,
}

impl Charge {
    /// The API-call overage as the default catalog publishes it: a `package` charge on
    /// `api_calls` with the plan's monthly allowance included, 0.50 per started 1,000.
    pub fn api_call_overage(allowance: u64) -> Self {
        Self {
            metric: "api_calls".to_owned(),
            included: allowance,
            model: Model::Package { package_size: 1000, package_price: super::pricing::api_call_block() },
        }
    }

    /// Whether this is [`Self::api_call_overage`] of a plan with `allowance` calls a month:
    /// billed as the built-in overage is (an `overage` line, the allowance times the months of
    /// the period, so yearly periods keep their twelve months' allowance).
    pub fn is_api_call_overage(&self, allowance: Option<u64>) -> bool {
        allowance.is_some_and(|a| *self == Self::api_call_overage(a))
    }

    /// Checks the figures: prices not negative, a package of at least one unit, tiers with
    /// increasing ends and only the last one open.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        let negative = |d: &Decimal| d.is_sign_negative() && !d.is_zero();
        let bad = |why: &str| Err(ValidationError::new(field, why.to_owned()));
        match &self.model {
            Model::PerUnit { unit_price } if negative(unit_price) => bad("unit_price must not be negative"),
            Model::Package { package_size: 0, .. } => bad("package_size must be at least 1"),
            Model::Package { package_price, .. } if negative(package_price) => bad("package_price must not be negative"),
            Model::Graduated { tiers } | Model::Volume { tiers } => {
                if tiers.is_empty() {
                    return bad("tiers must not be empty");
                }
                let mut previous = 0;
                for (i, tier) in tiers.iter().enumerate() {
                    if negative(&tier.unit_price) || negative(&tier.flat_fee) {
                        return bad("tier prices and flat fees must not be negative");
                    }
                    match tier.up_to {
                        None if i + 1 != tiers.len() => return bad("only the last tier may have up_to null"),
                        Some(_) if i + 1 == tiers.len() => return bad("the last tier must have up_to null"),
                        Some(end) if end <= previous => return bad("tiers' up_to must increase"),
                        Some(end) => previous = end,
                        None => {}
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The invoice lines (kind `usage`) for `quantity` units (a metric's aggregate, already
    /// rounded to its precision: decimals are priced as they are, a package counts a started
    /// one, a tier holds the units up to its end) of a period described by `dates`: none when
    /// nothing is billable; one per tier used for graduated tiers.
    pub fn lines(&self, quantity: Decimal, dates: &str) -> Vec<InvoiceLine> {
        let quantity = quantity.normalize();
        let billable = (quantity - Decimal::from(self.included)).max(Decimal::ZERO);
        if billable.is_zero() {
            return Vec::new();
        }
        let metric = &self.metric;
        let line = |description: String, quantity: Decimal, unit_price: Decimal, flat: Decimal| InvoiceLine {
            kind: LineKind::Usage,
            description,
            quantity: quantity.normalize(),
            unit_price,
            amount: round_cents(quantity * unit_price + flat),
            period: None,
            metric: Some(self.metric.clone()),
        };
        let included = if self.included > 0 { format!(" ({} included)", self.included) } else { String::new() };
        match &self.model {
            Model::PerUnit { unit_price } => {
                vec![line(format!("{metric}: {quantity}{included}, {dates}"), billable, *unit_price, Decimal::ZERO)]
            }
            Model::Package { package_size, package_price } => {
                let packages = (billable / Decimal::from(*package_size)).ceil();
                vec![line(
                    format!("{metric}: {quantity}{included}, per started {package_size}, {dates}"),
                    packages,
                    *package_price,
                    Decimal::ZERO,
                )]
            }
            Model::Graduated { tiers } => {
                let (mut lines, mut from) = (Vec::new(), Decimal::ZERO);
                for tier in tiers {
                    if billable <= from {
                        break;
                    }
                    let to = tier.up_to.map_or(billable, |end| Decimal::from(end).min(billable));
                    let span = match tier.up_to {
                        Some(end) => format!("{} – {end}", from.floor() + Decimal::ONE),
                        None => format!("{} and more", from.floor() + Decimal::ONE),
                    };
                    lines.push(line(format!("{metric}: tier {span}, {dates}"), to - from, tier.unit_price, tier.flat_fee));
                    from = to;
                }
                lines
            }
            Model::Volume { tiers } => {
                let tier = tiers.iter().find(|t| t.up_to.is_none_or(|end| billable <= Decimal::from(end))).or(tiers.last());
                tier.map(|t| vec![line(format!("{metric}: {quantity}{included}, {dates}"), billable, t.unit_price, t.flat_fee)])
                    .unwrap_or_default()
            }
        }
    }

    /// What `quantity` units cost in all.
    pub fn amount(&self, quantity: Decimal) -> Decimal {
        self.lines(quantity, "").iter().map(|l| l.amount).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(up_to: Option<u64>, unit_price: &str, flat_fee: &str) -> Tier {
        Tier { up_to, unit_price: unit_price.parse().unwrap(), flat_fee: flat_fee.parse().unwrap() }
    }

    fn charge(model: Model) -> Charge {
        Charge { metric: "api_calls".into(), included: 0, model }
    }

    #[test]
    fn graduated_as_in_the_contract_and_lagos_own_figures() {
        let graduated = charge(Model::Graduated { tiers: vec![tier(Some(10), "10", "2"), tier(Some(20), "5", "3"), tier(None, "5", "3")] });
        for (q, expected) in [(1, "12.00"), (10, "102.00"), (11, "110.00"), (21, "163.00")] {
            assert_eq!(graduated.amount(Decimal::from(q)).to_string(), expected, "q = {q}");
        }
        assert_eq!(graduated.lines(Decimal::from(21), "").len(), 3, "one line per tier used");
        assert!(graduated.lines(Decimal::from(0), "").is_empty());
    }

    #[test]
    fn volume_as_in_the_contract_and_lagos_own_figures() {
        let volume = charge(Model::Volume { tiers: vec![tier(Some(100), "2", "10"), tier(Some(200), "1", "0"), tier(None, "0.5", "50")] });
        for (q, expected) in [(1, "12.00"), (100, "210.00"), (101, "101.00"), (300, "200.00")] {
            assert_eq!(volume.amount(Decimal::from(q)).to_string(), expected, "q = {q}");
        }
        // Neither model is assumed cheaper than the other.
        let graduated =
            charge(Model::Graduated { tiers: vec![tier(Some(100), "2", "10"), tier(Some(200), "1", "0"), tier(None, "0.5", "50")] });
        assert!(graduated.amount(Decimal::from(101)) > volume.amount(Decimal::from(101)));
        assert!(graduated.amount(Decimal::from(1)) == volume.amount(Decimal::from(1)));
    }

    #[test]
    fn per_unit_and_package_after_included_units() {
        let per_unit = Charge { metric: "sms".into(), included: 100, model: Model::PerUnit { unit_price: "0.05".parse().unwrap() } };
        assert_eq!(per_unit.amount(Decimal::from(100)), Decimal::ZERO);
        assert_eq!(per_unit.amount(Decimal::from(103)).to_string(), "0.15");
        // Today's API-call overage: 10,000 included, 0.50 per started 1,000.
        let package = Charge {
            metric: "api_calls".into(),
            included: 10_000,
            model: Model::Package { package_size: 1000, package_price: "0.50".parse().unwrap() },
        };
        for (q, expected) in [(10_000, "0"), (10_001, "0.50"), (12_000, "1.00"), (12_001, "1.50")] {
            assert_eq!(package.amount(Decimal::from(q)).to_string(), expected, "q = {q}");
        }
    }

    #[test]
    fn decimal_quantities_are_priced_as_they_are_per_unit_and_across_tiers() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        let per_unit = Charge { metric: "gb_hours".into(), included: 1, model: Model::PerUnit { unit_price: d("0.10") } };
        assert_eq!(per_unit.amount(d("3.5")).to_string(), "0.25", "2.5 billable GB-hours at 0.10");
        assert_eq!(per_unit.lines(d("3.5"), "d")[0].quantity.to_string(), "2.5");
        let graduated = charge(Model::Graduated { tiers: vec![tier(Some(10), "1", "0"), tier(None, "0.5", "0")] });
        let lines = graduated.lines(d("12.5"), "d");
        assert_eq!(lines.iter().map(|l| l.quantity.to_string()).collect::<Vec<_>>(), ["10", "2.5"]);
        assert_eq!(graduated.amount(d("12.5")).to_string(), "11.25");
        assert_eq!(graduated.amount(d("9.75")).to_string(), "9.75", "within the first tier");
        let package = charge(Model::Package { package_size: 10, package_price: d("1") });
        assert_eq!(package.amount(d("10.000001")).to_string(), "2.00", "a started package");
        let volume = charge(Model::Volume { tiers: vec![tier(Some(10), "1", "0"), tier(None, "0.5", "0")] });
        assert_eq!(volume.amount(d("10.5")).to_string(), "5.25", "10.5 lies beyond the first tier's 10");
    }

    #[test]
    fn amounts_are_rounded_half_away_from_zero_once_per_line() {
        let per_unit = charge(Model::PerUnit { unit_price: "0.005".parse().unwrap() });
        assert_eq!(per_unit.amount(Decimal::from(1)).to_string(), "0.01");
        assert_eq!(per_unit.amount(Decimal::from(3)).to_string(), "0.02", "0.015 → 0.02");
    }

    #[test]
    fn bad_figures_are_refused() {
        for model in [
            Model::Package { package_size: 0, package_price: Decimal::ONE },
            Model::PerUnit { unit_price: "-1".parse().unwrap() },
            Model::Graduated { tiers: vec![] },
            Model::Graduated { tiers: vec![tier(Some(10), "1", "0")] },
            Model::Volume { tiers: vec![tier(None, "1", "0"), tier(None, "1", "0")] },
            Model::Volume { tiers: vec![tier(Some(10), "1", "0"), tier(Some(5), "1", "0"), tier(None, "1", "0")] },
        ] {
            assert!(charge(model.clone()).validate("charges[0]").is_err(), "{model:?}");
        }
        let fine: Charge = serde_json::from_value(serde_json::json!({"metric": "seats", "model": "graduated", "included": 2,
            "tiers": [{"up_to": 10, "unit_price": "1.00"}, {"up_to": null, "unit_price": "0.50", "flat_fee": "5.00"}]}))
        .unwrap();
        assert!(fine.validate("charges[0]").is_ok());
    }

    #[test]
    fn the_default_catalogs_api_call_overage_is_a_package_charge_with_the_contracts_figures() {
        let catalog = crate::plan::default_catalog();
        let starter = catalog.iter().find(|p| p.code.as_str() == "starter").unwrap();
        assert_eq!(starter.charges, [Charge::api_call_overage(10_000)]);
        assert!(starter.charges[0].is_api_call_overage(starter.limits.api_calls_per_month));
        for (calls, expected) in [(10_000, "0.00"), (10_001, "0.50"), (12_000, "1.00"), (12_001, "1.50")] {
            let amount: Decimal = starter.charges[0].lines(Decimal::from(calls), "d").iter().map(|l| l.amount).sum();
            assert_eq!(round_cents(amount).to_string(), expected, "{calls}");
        }
        let enterprise = catalog.iter().find(|p| p.code.as_str() == "enterprise").unwrap();
        assert!(enterprise.charges.is_empty(), "unlimited calls: no overage");
    }
}
