use super::string_value;
use crate::ValidationError;

string_value!(
    /// A BCP 47 language tag of the common shape `ll`, `ll-RR` or `ll-Ssss-RR` (`de-CH`).
    Locale
);

impl Locale {
    /// Accepts a 2-3 letter language, an optional 4-letter script and an optional 2-letter
    /// or 3-digit region, normalising case (`DE-ch` becomes `de-CH`).
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::new("locale", "must be a language tag such as \"en\" or \"de-CH\"");
        let mut parts = input.split(['-', '_']);
        let lang = parts.next().filter(|l| (2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphabetic())).ok_or_else(err)?;
        let mut out = lang.to_ascii_lowercase();
        let mut rest: Vec<&str> = parts.collect();
        if let Some(script) = rest.first().filter(|s| s.len() == 4 && s.bytes().all(|b| b.is_ascii_alphabetic())) {
            out.push('-');
            out.push_str(&script[..1].to_ascii_uppercase());
            out.push_str(&script[1..].to_ascii_lowercase());
            rest.remove(0);
        }
        match rest.as_slice() {
            [] => {}
            [region] if region.len() == 2 && region.bytes().all(|b| b.is_ascii_alphabetic()) => {
                out.push('-');
                out.push_str(&region.to_ascii_uppercase());
            }
            [region] if region.len() == 3 && region.bytes().all(|b| b.is_ascii_digit()) => {
                out.push('-');
                out.push_str(region);
            }
            _ => return Err(err()),
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_tags_normalise() {
        assert_eq!(Locale::parse("de-ch").unwrap().as_str(), "de-CH");
        assert_eq!(Locale::parse("en").unwrap().as_str(), "en");
        assert_eq!(Locale::parse("zh-hant-TW").unwrap().as_str(), "zh-Hant-TW");
        assert_eq!(Locale::parse("es-419").unwrap().as_str(), "es-419");
        for bad in ["", "e", "english", "en-", "en-US-x", "12"] {
            assert!(Locale::parse(bad).is_err(), "{bad}");
        }
    }
}
