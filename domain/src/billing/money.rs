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

/// Parses a price: a non-negative decimal string with at most two places (`"29.00"`, `"5"`),
/// at most 1,000,000,000.
pub fn parse_price(input: &str, field: &str) -> Result<rust_decimal::Decimal, crate::ValidationError> {
    let err = || crate::ValidationError::new(field, "must be a price such as \"29.00\" (0 or more, at most 2 decimals)");
    let value: Decimal = input.trim().parse().map_err(|_| err())?;
    if value.is_sign_negative() && !value.is_zero() || value.scale() > 2 || value > Decimal::from(1_000_000_000) {
        return Err(err());
    }
    let mut value = value;
    value.rescale(2);
    Ok(value)
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
