//! The one error type of the API, and the contract's error body:
//! `{"error": {"code": "UPPER_SNAKE", "message": "...", "details": {...}}}`.
//!
//! Domain refusals map by their kind (validation → 400, not found → 404, conflict → 409,
//! quota → 429, forbidden → 403); infrastructure faults are logged with the request id and
//! answered as a bare `INTERNAL` that names the request id and nothing else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use domain::{Rejection, RejectionKind, ValidationError};
use serde_json::{json, Map, Value};

tokio::task_local! {
    /// The current request's id, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The contract's code.
    pub code: String,
    /// A human sentence.
    pub message: String,
    /// Structured details.
    pub details: Map<String, Value>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into(), details: Map::new(), retry_after: None }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `VALIDATION_FAILED` on `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ValidationError::new(field, message).into()
    }

    /// 400 `MALFORMED_JSON`.
    pub fn malformed_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MALFORMED_JSON", message)
    }

    /// 401 `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
    }

    /// 403 `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no such {what}"))
    }

    /// 413 `PAYLOAD_TOO_LARGE`, naming the limit (`SAAS_LEDGER_MAX_BODY_BYTES`).
    pub fn too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the request body is larger than this server's limit of {limit_bytes} bytes; send less (usage in batches of at most 1,000 records)"),
        )
        .with("limit_bytes", limit_bytes)
    }

    /// 503 `UNAVAILABLE` with `Retry-After`: the database cannot take the request now (it is
    /// gone, restarting, or no longer the primary while the server moves to the new one). A
    /// command answered so may or may not have been recorded: retry it with its key.
    pub fn unavailable() -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the database cannot take writes right now; retry (with the same idempotency key) after Retry-After",
        );
        error.retry_after = Some(UNAVAILABLE_RETRY_AFTER);
        error
    }

    /// 500 `INTERNAL`: logs `cause` and tells the client only the request id. A cause that says
    /// the database cannot take the request now (connection lost, shutting down, a standby) is
    /// [`Self::unavailable`] instead.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let cause = cause.to_string();
        if commands::cluster::unavailable_text(&cause) {
            tracing::warn!(error = %cause, "the database cannot take the request now");
            return Self::unavailable();
        }
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "an internal error occurred; quote the request id when reporting it")
    }

    /// The canonical error for a bare status produced outside our handlers (router 404/405,
    /// body limits, timeouts, panics).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("NOT_FOUND", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => ("METHOD_NOT_ALLOWED", "this route does not accept that method"),
            StatusCode::PAYLOAD_TOO_LARGE => ("PAYLOAD_TOO_LARGE", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UNSUPPORTED_MEDIA_TYPE", "send the body as application/json"),
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
                ("TIMEOUT", "the request took too long; it may or may not have taken effect")
            }
            StatusCode::UNAUTHORIZED => ("UNAUTHENTICATED", "missing or invalid credentials"),
            StatusCode::FORBIDDEN => ("FORBIDDEN", "not allowed"),
            s if s.is_server_error() => return Self::internal(format!("bare {s} response")),
            _ => ("BAD_REQUEST", "the request is invalid"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut details = self.details;
        if self.status.is_server_error() {
            if let Ok(id) = REQUEST_ID.try_with(Clone::clone) {
                details.insert("request_id".into(), Value::String(id));
            }
        }
        let body = json!({"error": {"code": self.code, "message": self.message, "details": details}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn status_of(kind: RejectionKind) -> StatusCode {
    match kind {
        RejectionKind::Validation => StatusCode::BAD_REQUEST,
        RejectionKind::NotFound => StatusCode::NOT_FOUND,
        RejectionKind::Conflict => StatusCode::CONFLICT,
        RejectionKind::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
        RejectionKind::Forbidden => StatusCode::FORBIDDEN,
    }
}

/// Any domain refusal.
pub fn rejection(r: &dyn Rejection) -> ApiError {
    ApiError { status: status_of(r.kind()), code: r.code().to_owned(), message: r.to_string(), details: r.details(), retry_after: None }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        rejection(&e)
    }
}

impl<E: Rejection> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Domain(e) => rejection(&e),
            CommandError::Store(r) => rejection(&r),
            CommandError::Concurrency(_) => Self::new(StatusCode::CONFLICT, "CONCURRENT_MODIFICATION", e.to_string()),
            CommandError::Internal(cause) => Self::internal(cause),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if commands::cluster::is_unavailable(&e) {
            tracing::warn!(error = %e, "the database cannot take the request now");
            return Self::unavailable();
        }
        Self::internal(e)
    }
}

/// Seconds a client is told to wait before retrying a request the database could not take
/// (a failover takes a few: the watch probes the primary every half second).
pub const UNAVAILABLE_RETRY_AFTER: u64 = 2;
