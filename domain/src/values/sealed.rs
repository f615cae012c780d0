use serde::{Deserialize, Serialize};

/// Personal data as stored: sealed by the write side with its tenant's key before any command
/// sees it (see `commands::vault`), so events and read models never hold it in clear and an
/// erasure (destroying the key) makes every copy unreadable. The domain never needs the clear
/// text: it only carries the value from command to event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Sealed))]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps text produced by the vault (or read back from the log).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
