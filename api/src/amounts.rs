//! The answer types of amounts: [`Money`] (a decimal string with two places, rounded half-up
//! once, where the rule that computed it said) and [`Quantity`] (a decimal string with no
//! trailing zeros). Answers hold these instead of strings, so their schema and their
//! formatting are written once.

use rust_decimal::Decimal;
use serde::{Serialize, Serializer};

/// Money: a decimal string with two places (`"29.00"`, `"-5.40"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(value_type = String, pattern = r"^-?[0-9]+\.[0-9]{2}$", example = "29.00")]
pub struct Money(pub Decimal);

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&domain::billing::money::format(self.0))
    }
}

impl From<Decimal> for Money {
    fn from(amount: Decimal) -> Self {
        Self(amount)
    }
}

/// A decimal quantity as a string, without trailing zeros (`"1"`, `"12001"`, `"0.5"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(value_type = String, pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "3")]
pub struct Quantity(pub Decimal);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.normalize().to_string())
    }
}

impl From<Decimal> for Quantity {
    fn from(quantity: Decimal) -> Self {
        Self(quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: impl Serialize) -> String {
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn amounts_serialise_as_the_contract_writes_them() {
        assert_eq!(json(Money(Decimal::new(29, 0))), "\"29.00\"");
        assert_eq!(json(Money(Decimal::new(-54, 1))), "\"-5.40\"");
        assert_eq!(json(Quantity(Decimal::new(15000, 4))), "\"1.5\"");
        assert_eq!(json(Quantity(Decimal::new(12001, 0))), "\"12001\"");
    }
}
