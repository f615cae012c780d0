//! Usage quantities: decimals with at most [`MAX_SCALE`] places, stored in the log as a JSON
//! number when whole (so that every fact recorded before quantities were decimal reads the same,
//! and a whole quantity is written as it always was) and as a decimal string otherwise (a JSON
//! number with a fraction would pass through a binary float on the way).

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use crate::ValidationError;

/// The most decimal places a quantity may have.
pub const MAX_SCALE: u32 = 6;

/// The largest quantity one fact may carry.
pub const MAX_QUANTITY: i64 = 1_000_000_000_000_000;

/// Checks a quantity: from 0 to [`MAX_QUANTITY`], with at most [`MAX_SCALE`] decimal places;
/// answered without trailing zeros (`1.500` is `1.5`).
pub fn parse_quantity(quantity: Decimal) -> Result<Decimal, ValidationError> {
    let quantity = quantity.normalize();
    if quantity.is_sign_negative() && !quantity.is_zero() || quantity > Decimal::from(MAX_QUANTITY) {
        return Err(ValidationError::new("quantity", format!("must be a number from 0 to {MAX_QUANTITY}")));
    }
    if quantity.scale() > MAX_SCALE {
        return Err(ValidationError::new(
            "quantity",
            format!("must have at most {MAX_SCALE} decimal places ({quantity} has {})", quantity.scale()),
        ));
    }
    // `-0` reads as 0.
    Ok(if quantity.is_zero() { Decimal::ZERO } else { quantity })
}

/// Reads a quantity as a client sends it: a JSON number or a decimal string (`"2.5"`), exactly as
/// written (a number's text, not a float's approximation of it). `None` when it is neither.
pub fn quantity_from_json(value: &serde_json::Value) -> Option<Decimal> {
    let text = match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    if text.is_empty() || text.starts_with('+') {
        return None;
    }
    text.parse::<Decimal>().ok().or_else(|| Decimal::from_scientific(&text).ok())
}

/// Writes a quantity: a whole one as a JSON number, any other as a decimal string.
pub fn serialize<S: Serializer>(quantity: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let normal = quantity.normalize();
    if normal.scale() == 0 {
        if let Ok(whole) = i64::try_from(normal) {
            return serializer.serialize_i64(whole);
        }
    }
    serializer.serialize_str(&normal.to_string())
}

/// Reads a quantity written by [`serialize`] (or a whole number of the log's first years).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    deserializer.deserialize_any(QuantityVisitor)
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a quantity: a number or a decimal string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        // Shortest round-trip text, not the float's binary expansion.
        v.to_string().parse::<Decimal>().map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        v.parse::<Decimal>().or_else(|_| Decimal::from_scientific(v)).map_err(E::custom)
    }
}

/// [`serialize`] and [`deserialize`] for an optional quantity.
pub mod option {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `Some` as [`super::serialize`], `None` as null.
    pub fn serialize<S: Serializer>(quantity: &Option<Decimal>, serializer: S) -> Result<S::Ok, S::Error> {
        match quantity {
            Some(q) => super::serialize(q, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Reads null or a quantity.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] Decimal);
        Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fact {
        #[serde(with = "super")]
        quantity: Decimal,
    }

    #[test]
    fn whole_quantities_are_numbers_as_before_and_fractions_are_exact_strings() {
        let json = |q: &str| serde_json::to_string(&Fact { quantity: q.parse().unwrap() }).unwrap();
        assert_eq!(json("12001"), r#"{"quantity":12001}"#);
        assert_eq!(json("5.000"), r#"{"quantity":5}"#);
        assert_eq!(json("0.1"), r#"{"quantity":"0.1"}"#);
        assert_eq!(json("1.250000"), r#"{"quantity":"1.25"}"#);
        for text in [r#"{"quantity":12001}"#, r#"{"quantity":"0.1"}"#, r#"{"quantity":"123456789012.123456"}"#] {
            let fact: Fact = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&fact).unwrap(), text);
        }
        let from_value: Fact = serde_json::from_value(serde_json::json!({"quantity": 7})).unwrap();
        assert_eq!(from_value.quantity, Decimal::from(7));
    }

    #[test]
    fn a_client_quantity_is_read_as_written_and_checked() {
        let read = |v: serde_json::Value| quantity_from_json(&v).map(|d| d.to_string());
        assert_eq!(read(serde_json::json!(2.5)), Some("2.5".into()));
        assert_eq!(read(serde_json::json!(0.1)), Some("0.1".into()));
        assert_eq!(read(serde_json::json!("0.000001")), Some("0.000001".into()));
        assert_eq!(read(serde_json::json!(true)), None);
        assert_eq!(read(serde_json::json!("abc")), None);
        assert_eq!(read(serde_json::json!("+1")), None);
        assert_eq!(parse_quantity("1.500".parse().unwrap()).unwrap().to_string(), "1.5");
        assert_eq!(parse_quantity("0.000001".parse().unwrap()).unwrap().to_string(), "0.000001");
        for bad in ["0.0000001", "-1", "1000000000000000.5"] {
            assert_eq!(parse_quantity(bad.parse().unwrap()).unwrap_err().field, "quantity", "{bad}");
        }
    }
}
