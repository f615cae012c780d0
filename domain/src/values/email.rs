use super::{has_control, string_value};
use crate::ValidationError;

string_value!(
    /// An e-mail address, lowercased in its domain part. The check is deliberately plain
    /// (one `@`, a dotted domain, no spaces, at most 254 characters): the only real proof of
    /// an address is a delivered message.
    Email
);

impl Email {
    /// Parses an address; `field` names it in errors.
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::new(field, "must be an e-mail address like name@example.com");
        let input = input.trim();
        if input.len() > 254 || has_control(input) || input.contains(char::is_whitespace) {
            return Err(err());
        }
        let (local, domain) = input.split_once('@').ok_or_else(err)?;
        let domain_ok =
            domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.') && !domain.contains("..") && !domain.contains('@');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(err());
        }
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_parse_and_junk_does_not() {
        assert_eq!(Email::parse("Billing@Example.COM", "e").unwrap().as_str(), "Billing@example.com");
        for bad in ["", "a", "a@b", "@b.com", "a@b..com", "a b@c.com", "a@b.com.", "a@@b.com"] {
            assert!(Email::parse(bad, "e").is_err(), "{bad}");
        }
    }
}
