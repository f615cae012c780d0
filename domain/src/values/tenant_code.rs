use super::string_value;
use crate::ValidationError;

string_value!(
    /// A tenant's platform-wide unique, URL-safe code: `[a-z0-9-]{3,50}`.
    TenantCode
);

impl TenantCode {
    /// Accepts 3 to 50 characters of lowercase ASCII letters, digits and `-`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok_chars = input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !(3..=50).contains(&input.len()) || !ok_chars {
            return Err(ValidationError::new("code", "must be 3 to 50 characters of a-z, 0-9 and '-'"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The code as used in invoice numbers (`ACME-CLINIC-000001`).
    pub fn upper(&self) -> String {
        self.0.to_ascii_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_contract_alphabet_and_lengths() {
        for ok in ["abc", "acme-clinic-01", &"a".repeat(50)] {
            assert!(TenantCode::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Acme", "acme clinic", "acme_clinic", "ämé", &"a".repeat(51), ""] {
            assert!(TenantCode::parse(bad).is_err(), "{bad}");
        }
    }
}
