//! How the domain says "no": every refusal carries a stable code and a kind, and the API maps
//! the kind to an HTTP status in exactly one place.

use serde_json::{Map, Value};

/// What sort of refusal an error is; the API layer turns this into a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The input is wrong (400).
    Validation,
    /// The thing addressed does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// A plan limit would be exceeded (429).
    QuotaExceeded,
    /// The caller may not do this (403).
    Forbidden,
}

/// A domain refusal: a stable machine code, a human sentence and structured details.
pub trait Rejection: std::error::Error {
    /// What sort of refusal this is.
    fn kind(&self) -> RejectionKind;
    /// The contract's `UPPER_SNAKE` error code.
    fn code(&self) -> &str;
    /// Structured details for the client (which field, which limit, ...).
    fn details(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// Input that failed validation; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field, as the client named it (`code`, `customer.email`, ...).
    pub field: String,
    /// Why the value is refused.
    pub message: String,
}

impl ValidationError {
    /// A validation error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    /// The same error, reported under another field name (a parser knows the rule, the
    /// caller knows where the value came from).
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
}

impl Rejection for ValidationError {
    fn kind(&self) -> RejectionKind {
        RejectionKind::Validation
    }
    fn code(&self) -> &str {
        "VALIDATION_FAILED"
    }
    fn details(&self) -> Map<String, Value> {
        let mut details = Map::new();
        details.insert("field".into(), Value::String(self.field.clone()));
        details.insert("reason".into(), Value::String(self.message.clone()));
        details
    }
}
