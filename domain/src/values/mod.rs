//! Value objects: parse, don't validate. Each type can only be built by its `parse`, so a
//! value of the type is proof that the input was valid. Stored events deserialize them
//! without re-validating (`serde(transparent)`): the log is history, and history does not
//! become invalid when a rule is tightened later.

mod color;
mod currency;
mod email;
mod locale;
mod name;
mod sealed;
mod tax_rate;
mod tenant_code;
mod timezone;
mod web;

pub use color::HexColor;
pub use currency::CurrencyCode;
pub use email::Email;
pub use locale::Locale;
pub use name::{BusinessType, DisplayName};
pub use sealed::Sealed;
pub use tax_rate::TaxRate;
pub use tenant_code::TenantCode;
pub use timezone::TimeZoneName;
pub use web::{DomainName, HttpsUrl};

/// Declares a string newtype: transparent serde, `as_str`, `Display`, and `into_inner`.
macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::$name))]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The owned text.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use string_value;

/// True when `s` contains a control character (newlines, NUL, ...), which no single-line
/// field accepts.
pub(crate) fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
