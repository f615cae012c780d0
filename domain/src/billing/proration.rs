//! Proration by the second: switching plans at `at` inside `period` credits the unused part of
//! the old price and charges the same part of the new one, each rounded half-up to the cent:
//! `credit = old × remaining / length`, `charge = new × remaining / length`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::money::round_cents;
use super::period::Period;

/// The two amounts of a mid-period switch (both non-negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// What the unused rest of the old price is worth.
    pub credit: Decimal,
    /// What the rest of the period costs at the new price.
    pub charge: Decimal,
}

/// The share of `period` left at `at`, in `[0, 1]`.
pub fn remaining_share(period: Period, at: DateTime<Utc>) -> Decimal {
    let length = period.seconds();
    if length <= 0 {
        return Decimal::ZERO;
    }
    let remaining = (period.end - at).num_seconds().clamp(0, length);
    Decimal::from(remaining) / Decimal::from(length)
}

/// Splits a switch from `old_price` to `new_price` at `at` within `period`.
pub fn split(old_price: Decimal, new_price: Decimal, period: Period, at: DateTime<Utc>) -> Split {
    let share = remaining_share(period, at);
    Split { credit: round_cents(old_price * share), charge: round_cents(new_price * share) }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn period() -> Period {
        Period { start: Utc.with_ymd_and_hms(2027, 4, 1, 0, 0, 0).unwrap(), end: Utc.with_ymd_and_hms(2027, 5, 1, 0, 0, 0).unwrap() }
    }

    #[test]
    fn the_contracts_half_way_example() {
        let at = Utc.with_ymd_and_hms(2027, 4, 16, 0, 0, 0).unwrap();
        let s = split(Decimal::new(2900, 2), Decimal::new(7900, 2), period(), at);
        assert_eq!((s.credit.to_string(), s.charge.to_string()), ("14.50".into(), "39.50".into()));
        assert_eq!((s.charge - s.credit).to_string(), "25.00");
    }

    proptest! {
        #[test]
        fn credit_plus_charge_never_exceeds_the_full_price_difference(
            old in 0i64..1_000_000, new in 0i64..1_000_000, offset in 0i64..(30 * 86_400),
        ) {
            let (old, new) = (Decimal::new(old, 2), Decimal::new(new, 2));
            let at = period().start + chrono::Duration::seconds(offset);
            let s = split(old, new, period(), at);
            prop_assert!(s.credit >= Decimal::ZERO && s.credit <= old);
            prop_assert!(s.charge >= Decimal::ZERO && s.charge <= new);
            // Each amount is rounded once, so the net differs from the exact prorated
            // difference by at most a cent, and never exceeds the full difference.
            prop_assert!((s.charge - s.credit).abs() <= (new - old).abs() + Decimal::new(1, 2));
            let exact = (new - old) * remaining_share(period(), at);
            prop_assert!(((s.charge - s.credit) - exact).abs() <= Decimal::new(1, 2));
        }
    }
}
