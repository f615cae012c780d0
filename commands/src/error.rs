//! Why a command did not commit.

use cqrs_es::AggregateError;
use domain::{Rejection, RejectionKind};
use serde_json::{Map, Value};
use sqlx::postgres::PgDatabaseError;

/// A rule the database enforced atomically with the append (a unique tenant code, a quota,
/// a booking overlap), raised by a trigger with a SQLSTATE of class `SL`:
/// `SL400` invalid, `SL404` not found, `SL409` conflict, `SL429` quota exceeded. The trigger
/// puts `{"code": "...", ...details}` in the error's DETAIL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StoreRejection {
    /// The status class.
    pub kind: RejectionKind,
    /// The contract's error code.
    pub code: String,
    /// The trigger's message.
    pub message: String,
    /// The rest of the DETAIL object.
    pub details: Map<String, Value>,
}

impl Rejection for StoreRejection {
    fn kind(&self) -> RejectionKind {
        self.kind
    }
    fn code(&self) -> &str {
        &self.code
    }
    fn details(&self) -> Map<String, Value> {
        self.details.clone()
    }
}

impl StoreRejection {
    /// Reads a trigger's refusal out of a database error; `None` for anything else.
    pub fn from_db(error: &PgDatabaseError) -> Option<Self> {
        Self::from_parts(error.code(), error.message(), error.detail())
    }

    /// The same from an error's SQLSTATE, message and detail (as `append_events` reports a
    /// command's refusal).
    pub fn from_parts(state: &str, message: &str, detail: Option<&str>) -> Option<Self> {
        let kind = match state {
            "SL400" => RejectionKind::Validation,
            "SL404" => RejectionKind::NotFound,
            "SL409" => RejectionKind::Conflict,
            "SL429" => RejectionKind::QuotaExceeded,
            // The slot exclusion constraint itself: a booking inserted other than by the
            // writer raced one that was (the trigger's own check raises SL409 first).
            "23P01" => {
                return Some(Self {
                    kind: RejectionKind::Conflict,
                    code: "BOOKING_OVERLAP".to_owned(),
                    message: "the room is already booked for part of that time".to_owned(),
                    details: Map::new(),
                })
            }
            _ => return None,
        };
        let mut details: Map<String, Value> = detail.and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
        let code = match details.remove("code") {
            Some(Value::String(code)) => code,
            _ => "CONFLICT".to_owned(),
        };
        Some(Self { kind, code, message: message.to_owned(), details })
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused it.
    #[error(transparent)]
    Domain(E),
    /// A database-enforced rule refused it.
    #[error(transparent)]
    Store(StoreRejection),
    /// Others kept changing the aggregate while we retried.
    #[error("the {0} was modified concurrently; retry the request")]
    Concurrency(&'static str),
    /// Infrastructure failed (database down, corrupt event, ...): a 500.
    #[error("{0}")]
    Internal(String),
}

impl<E: std::error::Error> CommandError<E> {
    /// Classifies a framework error.
    pub(crate) fn from_aggregate(error: AggregateError<E>, aggregate_type: &'static str) -> Self {
        match error {
            AggregateError::UserError(e) => Self::Domain(e),
            AggregateError::AggregateConflict => Self::Concurrency(aggregate_type),
            AggregateError::DatabaseConnectionError(e) | AggregateError::DeserializationError(e) => Self::Internal(e.to_string()),
            AggregateError::UnexpectedError(e) => {
                let rejection = e
                    .downcast_ref::<sqlx::Error>()
                    .and_then(|e| e.as_database_error())
                    .and_then(|e| e.try_downcast_ref::<PgDatabaseError>())
                    .and_then(StoreRejection::from_db);
                match rejection {
                    Some(rejection) => Self::Store(rejection),
                    None => Self::Internal(e.to_string()),
                }
            }
        }
    }

    /// Maps the domain error to another type (for services that wrap one aggregate's errors).
    pub fn map_domain<F: std::error::Error>(self, f: impl FnOnce(E) -> F) -> CommandError<F> {
        match self {
            Self::Domain(e) => CommandError::Domain(f(e)),
            Self::Store(r) => CommandError::Store(r),
            Self::Concurrency(t) => CommandError::Concurrency(t),
            Self::Internal(m) => CommandError::Internal(m),
        }
    }
}
