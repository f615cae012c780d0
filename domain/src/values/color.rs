use super::string_value;
use crate::ValidationError;

string_value!(
    /// A `#RRGGBB` colour, stored in upper case.
    HexColor
);

impl HexColor {
    /// Accepts exactly `#` and six hex digits.
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        match input.strip_prefix('#') {
            Some(hex) if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(Self(format!("#{}", hex.to_ascii_uppercase()))),
            _ => Err(ValidationError::new(field, "must be a colour like \"#1A2B3C\"")),
        }
    }
}
