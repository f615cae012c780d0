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
