//! Money is `rust_decimal::Decimal`, rounded half-up (away from zero) to the cent in exactly
//! one place, [`round_cents`], once per invoice line.

use rust_decimal::{Decimal, RoundingStrategy};

/// Rounds to whole cents, half-up: 0.005 → 0.01, -0.005 → -0.01.
pub fn round_cents(amount: Decimal) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(2);
    rounded
}

/// The contract's wire form: a decimal string with two places (`"29.00"`).
pub fn format(amount: Decimal) -> String {
    round_cents(amount).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_half_up_to_two_places() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(format(d("14.5")), "14.50");
        assert_eq!(format(d("0.005")), "0.01");
        assert_eq!(format(d("0.0049")), "0.00");
        assert_eq!(format(d("-0.005")), "-0.01");
        assert_eq!(format(d("29")), "29.00");
    }
}
