use super::string_value;
use crate::ValidationError;

string_value!(
    /// An ISO 4217 currency code (`EUR`, `USD`, `CHF`).
    CurrencyCode
);

impl CurrencyCode {
    /// Accepts active ISO 4217 codes, in upper case.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        iso_currency::Currency::from_code(input)
            .map(|c| Self(c.code().to_owned()))
            .ok_or_else(|| ValidationError::new("currency", "must be an ISO 4217 code such as \"EUR\""))
    }
}
