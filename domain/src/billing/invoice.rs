//! Invoice assembly: lines are rounded to the cent one by one, the subtotal is their exact sum,
//! tax is `subtotal × rate / 100` rounded half-up, and `total = subtotal + tax`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::round_cents;
use super::period::Period;
use crate::values::TaxRate;

/// What an invoice line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::LineKind))]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    /// The plan fee for a period, in advance.
    Plan,
    /// A mid-period plan change (credit or charge).
    Proration,
    /// Extra users or storage, in advance.
    Addon,
    /// Usage beyond the allowance, in arrears.
    Overage,
    /// Usage priced by one of the plan's charges, in arrears.
    Usage,
    /// A coupon's discount, before tax (negative).
    Discount,
    /// Account credit: a downgrade's unused time carried to the balance (and, in invoices
    /// issued before credit was applied after tax, credit applied).
    Credit,
}

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::InvoiceLine))]
pub struct InvoiceLine {
    /// What for.
    pub kind: LineKind,
    /// For people.
    pub description: String,
    /// How many units.
    pub quantity: Decimal,
    /// Price of one unit.
    pub unit_price: Decimal,
    /// `quantity × unit_price`, rounded to the cent.
    pub amount: Decimal,
    /// The service period the line is for (`plan`, `addon`, `proration`: the time it charges
    /// or credits; `usage`, `overage`: the period whose usage it bills). Absent on lines
    /// without one (discount, credit) and on lines of invoices issued before lines carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// The metric a `usage` or `overage` line bills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

impl InvoiceLine {
    /// A line of `quantity` units at `unit_price`, rounded once.
    pub fn new(kind: LineKind, description: impl Into<String>, quantity: Decimal, unit_price: Decimal) -> Self {
        let amount = round_cents(quantity * unit_price);
        Self { kind, description: description.into(), quantity, unit_price, amount, period: None, metric: None }
    }

    /// A line with an already-rounded amount (proration, credits): quantity 1.
    pub fn fixed(kind: LineKind, description: impl Into<String>, amount: Decimal) -> Self {
        let amount = round_cents(amount);
        Self { kind, description: description.into(), quantity: Decimal::ONE, unit_price: amount, amount, period: None, metric: None }
    }

    /// The line, for the service period `period`.
    pub fn over(mut self, period: Period) -> Self {
        self.period = Some(period);
        self
    }

    /// The line, billing `metric`.
    pub fn of_metric(mut self, metric: impl Into<String>) -> Self {
        self.metric = Some(metric.into());
        self
    }
}

/// The money of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Totals))]
pub struct Totals {
    /// The exact sum of the lines.
    pub subtotal: Decimal,
    /// Tax on the subtotal.
    pub tax: Decimal,
    /// `subtotal + tax`.
    pub total: Decimal,
}

/// Adds the lines up and applies the tax rate.
pub fn totals(lines: &[InvoiceLine], tax_rate: TaxRate) -> Totals {
    let subtotal = round_cents(lines.iter().map(|l| l.amount).sum());
    let tax = round_cents(subtotal * tax_rate.percent() / Decimal::ONE_HUNDRED);
    Totals { subtotal, tax, total: round_cents(subtotal + tax) }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn lines_always_sum_exactly_to_the_subtotal(
            lines in prop::collection::vec((0u32..10_000, -100_000i64..100_000, 0u32..6), 0..12),
            rate in 0u32..10_000,
        ) {
            let lines: Vec<InvoiceLine> = lines
                .into_iter()
                .map(|(qty, unit, scale)| InvoiceLine::new(LineKind::Overage, "x", Decimal::from(qty), Decimal::new(unit, scale)))
                .collect();
            let rate = TaxRate::parse(&Decimal::new(i64::from(rate), 2).to_string()).unwrap();
            let t = totals(&lines, rate);
            prop_assert_eq!(t.subtotal, lines.iter().map(|l| l.amount).sum::<Decimal>());
            prop_assert_eq!(t.total, t.subtotal + t.tax);
            prop_assert!(lines.iter().all(|l| l.amount.scale() == 2));
        }
    }
}
