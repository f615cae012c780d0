use super::{has_control, string_value};
use crate::ValidationError;

string_value!(
    /// An absolute `https://` URL of at most 2048 characters (logos are shown in browsers, so
    /// plain http and other schemes are refused).
    HttpsUrl
);

impl HttpsUrl {
    /// Accepts `https://host[/path]` with a dotted host and no whitespace.
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::new(field, "must be an https:// URL");
        let rest = input.strip_prefix("https://").ok_or_else(err)?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
        if input.len() > 2048 || has_control(input) || input.contains(char::is_whitespace) || DomainName::parse(host, field).is_err() {
            return Err(err());
        }
        Ok(Self(input.to_owned()))
    }
}

string_value!(
    /// A DNS host name (`booking.acme-clinic.ch`), lowercased.
    DomainName
);

impl DomainName {
    /// Accepts dotted labels of letters, digits and inner hyphens, 253 characters at most.
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        let lower = input.to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        let label_ok = |l: &&str| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if lower.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err(ValidationError::new(field, "must be a host name like \"booking.example.com\""));
        }
        Ok(Self(lower))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_domains() {
        assert!(HttpsUrl::parse("https://cdn.example.com/logo.png", "f").is_ok());
        assert!(HttpsUrl::parse("https://cdn.example.com:8443/l.png?x=1", "f").is_ok());
        for bad in ["http://example.com/x", "javascript:alert(1)", "https://", "https://x", "https://a b.com"] {
            assert!(HttpsUrl::parse(bad, "f").is_err(), "{bad}");
        }
        assert_eq!(DomainName::parse("Book.Example.com", "d").unwrap().as_str(), "book.example.com");
        assert!(DomainName::parse("-bad.com", "d").is_err());
        assert!(DomainName::parse("localhost", "d").is_err());
    }
}
