//! Request extractors that answer bad input in the contract's shape: JSON bodies (content
//! type, size, syntax, shape, unknown fields), query strings and ids in paths.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// A JSON body. Refuses a non-JSON content type (415), an oversized body (413), broken JSON
/// (400 `MALFORMED_JSON`) and JSON of the wrong shape (400 `VALIDATION_FAILED` naming the
/// field). Request types deny unknown fields, so a misspelt optional field is an error
/// rather than silently ignored.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// Like [`ApiJson`], but an empty body means `T::default()` (for commands whose body is
/// optional, such as `reactivate`).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<(bool, Bytes), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE),
        _ => ApiError::malformed_json(rejection.body_text()),
    })?;
    Ok((is_json, bytes))
}

fn parse<T: DeserializeOwned>(is_json: bool, bytes: &[u8]) -> Result<T, ApiError> {
    if !is_json {
        return Err(ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE).with("expected", "application/json"));
    }
    // Syntax first (the whole body), then shape: a broken body is MALFORMED_JSON even when
    // its first part already has the wrong shape.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::malformed_json(format!("the body is not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = field_of(&path, &message);
        ApiError::validation(&field, teach(strip_position(&message)))
    })
}

/// The field an error is about: the path where it happened, or, for missing and unknown
/// fields (reported at the parent), the field named in serde's message.
fn field_of(path: &str, message: &str) -> String {
    let named = |prefix: &str| message.split_once(prefix).and_then(|(_, rest)| rest.split_once('`')).map(|(name, _)| name.to_owned());
    // An unknown field is reported at its own path; a missing one at its parent's.
    if let Some(name) = named("unknown field `") {
        return if path == "." { name } else { path.to_owned() };
    }
    match (path, named("missing field `")) {
        (".", Some(name)) => name,
        (".", None) => "body".to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// Date-time parsing errors say what was wrong with the text, not what was expected: they
/// are completed with the expected format and an example.
fn teach(message: String) -> String {
    const CHRONO: [&str; 7] = [
        "premature end of input",
        "input contains invalid characters",
        "input is out of range",
        "trailing input",
        "no possible date and time matching input",
        "input is not enough for unique date and time",
        "bad or unsupported format string",
    ];
    if CHRONO.contains(&message.as_str()) {
        format!("{message}: expected an RFC 3339 date-time with an offset, such as 2027-01-05T10:00:00Z or 2027-01-05T11:00:00+01:00")
    } else {
        message
    }
}

fn strip_position(message: &str) -> String {
    message.split(" at line ").next().unwrap_or(message).to_owned()
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (is_json, bytes) = body_bytes(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::malformed_json("the request needs a JSON body"));
        }
        parse(is_json, &bytes).map(Self)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (is_json, bytes) = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse(is_json, &bytes).map(Self)
    }
}

/// A query string; a malformed one is 400 `VALIDATION_FAILED`.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| Self(q)).map_err(|rejection| {
            let text = rejection.body_text();
            let message = text.trim_start_matches("Failed to deserialize query string: ");
            // axum names the parameter as a path prefix (`from: premature end of input`) when it
            // can; otherwise the unknown or missing one is named in backticks.
            let (field, message) = match message.split_once(": ") {
                Some((field, rest)) if !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') => {
                    (field.to_owned(), rest)
                }
                _ => {
                    let named = message.split_once('`').and_then(|(_, rest)| rest.split_once('`')).map_or("query", |(f, _)| f);
                    (named.to_owned(), message)
                }
            };
            ApiError::validation(&field, teach(message.to_owned()))
        })
    }
}

/// Parses an id taken from a path; anything that is not a UUID cannot name an existing
/// `what`, so it is 404 like any unknown id.
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_for_missing_unknown_and_mistyped_values() {
        assert_eq!(field_of(".", "missing field `code`"), "code");
        assert_eq!(field_of("colour", "unknown field `colour`, expected one of `a`"), "colour");
        assert_eq!(field_of("customer.nick", "unknown field `nick`, expected one of `a`"), "customer.nick");
        assert_eq!(field_of("customer", "missing field `email`"), "customer.email");
        assert_eq!(field_of("trial_days", "invalid type: string \"x\", expected u32"), "trial_days");
        assert_eq!(field_of(".", "invalid type: sequence, expected a map"), "body");
    }
}
