use super::string_value;
use crate::ValidationError;

string_value!(
    /// An IANA time-zone name (`Europe/Zurich`), as known to the bundled tz database.
    TimeZoneName
);

impl TimeZoneName {
    /// Accepts names of the IANA database (case-sensitive, as the database spells them).
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        input
            .parse::<chrono_tz::Tz>()
            .map(|tz| Self(tz.name().to_owned()))
            .map_err(|_| ValidationError::new(field, "must be an IANA time zone such as \"Europe/Zurich\" or \"UTC\""))
    }

    /// The zone for local-time arithmetic.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0.parse().unwrap_or(chrono_tz::UTC)
    }
}

#[cfg(test)]
mod tests {
    /// The OpenAPI document describes time zones by the shape of their names,
    /// `^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$` (an enum of the ~600 names broke a
    /// client generator): every name of the bundled database has that shape.
    #[test]
    fn every_bundled_name_has_the_documented_shape() {
        let shape = |name: &str| {
            let mut parts = name.split('/');
            let first = parts.next().unwrap_or_default();
            let rest: Vec<&str> = parts.collect();
            let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b));
            first.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && ok(first) && rest.len() <= 2 && rest.iter().all(|p| ok(p))
        };
        for tz in chrono_tz::TZ_VARIANTS {
            assert!(shape(tz.name()), "{}", tz.name());
        }
    }
}
