use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A tax rate in percent (`"8.1"` means 8.1 %), between 0 and 100 with at most four decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::TaxRate))]
#[serde(transparent)]
pub struct TaxRate(Decimal);

impl TaxRate {
    /// Parses the contract's percentage string.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::new("tax_rate", "must be a percentage string between \"0\" and \"100\" with at most 4 decimals");
        let rate: Decimal = input.trim().parse().map_err(|_| err())?;
        if rate.is_sign_negative() && !rate.is_zero() || rate > Decimal::ONE_HUNDRED || rate.scale() > 4 {
            return Err(err());
        }
        Ok(Self(rate.normalize()))
    }

    /// The rate in percent.
    pub fn percent(&self) -> Decimal {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_percentages() {
        assert_eq!(TaxRate::parse("8.10").unwrap().percent().to_string(), "8.1");
        assert_eq!(TaxRate::parse("0").unwrap(), TaxRate::default());
        for bad in ["-1", "100.01", "abc", "1.00001", ""] {
            assert!(TaxRate::parse(bad).is_err(), "{bad}");
        }
    }
}
