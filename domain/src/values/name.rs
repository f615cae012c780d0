use super::{has_control, string_value};
use crate::ValidationError;

string_value!(
    /// A human name (a tenant's, a key's, a resource's): 1 to 200 characters after trimming,
    /// no control characters.
    DisplayName
);

impl DisplayName {
    /// Trims the input and checks its length and characters; `field` names it in errors.
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > 200 {
            return Err(ValidationError::new(field, "must be at most 200 characters"));
        }
        if has_control(trimmed) {
            return Err(ValidationError::new(field, "must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }
}

string_value!(
    /// What kind of business a tenant is (`clinic`, `law_firm`, `school`, ...): free text so
    /// new verticals need no release, but short, lowercase and without spaces.
    BusinessType
);

impl BusinessType {
    /// Accepts 2 to 50 characters of `a-z`, `0-9`, `_` and `-`.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok = (2..=50).contains(&input.len())
            && input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(ValidationError::new("business_type", "must be 2 to 50 characters of a-z, 0-9, '_' and '-' (e.g. \"clinic\")"));
        }
        Ok(Self(input.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  Acme  ", "name").unwrap().as_str(), "Acme");
        assert_eq!(DisplayName::parse("Zürich Ärzte 医院", "name").unwrap().as_str(), "Zürich Ärzte 医院");
        assert!(DisplayName::parse("   ", "name").is_err());
        assert!(DisplayName::parse("a\nb", "name").is_err());
        assert!(DisplayName::parse(&"x".repeat(201), "name").is_err());
    }

    #[test]
    fn business_types_are_slugs() {
        assert!(BusinessType::parse("law_firm").is_ok());
        assert!(BusinessType::parse("Law Firm").is_err());
    }
}
