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

/// A quantity as a client sends it: a JSON number or a decimal string, 0 to 10^15, at most 6
/// decimal places (the OpenAPI schema of the usage and amendment bodies' `quantity`).
pub struct QuantityInput;

impl utoipa::PartialSchema for QuantityInput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number).minimum(Some(0)).maximum(Some(1_000_000_000_000_000_i64)))
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^[0-9]{1,16}(\.[0-9]{1,6})?$")))
            .description(Some("A JSON number or a decimal string (`\"2.5\"`), 0 to 10^15, at most 6 decimal places"))
            .examples([serde_json::json!("2.5")])
            .into()
    }
}

impl utoipa::ToSchema for QuantityInput {}

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
