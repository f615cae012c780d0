//! `Idempotency-Key` on every POST, as the contract says: a retry with the same key and the same
//! request gets the first response again (byte for byte, with `Idempotent-Replayed: true`) and
//! appends nothing; the same key with another request is 409 `IDEMPOTENCY_KEY_REUSED`.
//!
//! Records live in Postgres (`idempotency_keys`), so every server instance sees them. A key is
//! scoped to whoever sent it (a tenant, or the admin) and kept for 24 hours. The first request
//! claims the key (an insert); while it runs, a concurrent retry gets 409
//! `IDEMPOTENCY_KEY_IN_USE` with `Retry-After`. The handler and the recording of its response
//! run on their own task, so a client hanging up cannot leave the key claimed with the command
//! done. Responses that say "try again" (401, 429, 5xx) are not kept: the claim is released so
//! a retry runs afresh.
//!
//! A stored response may hold a one-time secret (the API key of a sign-up) or personal data, so
//! the table holds neither in clear: the key column is SHA-256 of the client's key, and the
//! response is sealed (XChaCha20-Poly1305) with a key derived from the client's key, which is
//! never stored. Only a client that still has its `Idempotency-Key` can have it replayed.
//! Erasing a tenant also deletes its records.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::sealing::SealingKey;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::{caller_of, Caller, TENANT_HEADER};
use crate::error::{ApiError, REQUEST_ID};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a response that is a replay of the first one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const RETENTION_HOURS: i64 = 24;
/// A claim older than this whose request never finished (its server died) may be taken over.
const ABANDONED_AFTER_SECS: i64 = 120;
/// Response headers kept with a stored response.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER];

/// The middleware.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST || !request.headers().contains_key(HEADER) {
        return next.run(request).await;
    }
    match guarded(state, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

fn validate_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let raw = headers.get(HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    let usable = (1..=255).contains(&raw.len()) && raw.iter().all(|b| b.is_ascii_graphic());
    if !usable {
        return Err(ApiError::validation("Idempotency-Key", "must be 1 to 255 visible ASCII characters (a UUID is a good choice)"));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

async fn guarded(state: AppState, request: Request, next: Next) -> Result<Response, Response> {
    let key = validate_key(request.headers()).map_err(IntoResponse::into_response)?;
    // Who is asking scopes the key. A request that does not authenticate (or is not meant to,
    // like the payment webhook) runs without idempotency: it will be refused or it has its own.
    let (request, caller) = caller_of(request, &state).await;
    let Ok(caller) = caller else {
        return Ok(next.run(request).await);
    };
    let (parts, body) = request.into_parts();
    let scope = match &caller {
        Caller::Admin { acting_for: None } => "admin".to_owned(),
        Caller::Admin { acting_for: Some(tenant_id) } => format!("tenant:{tenant_id}:admin"),
        Caller::Tenant(key) => format!("tenant:{}", key.tenant_id),
    };
    let secret = Secret::derive(&scope, &key);
    let key = secret.lookup.clone();
    let limit = state.config().max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE).into_response())?;
    let fingerprint = fingerprint(&parts, &bytes);

    match claim(&state, &scope, &key, &fingerprint).await.map_err(|e| ApiError::from(e).into_response())? {
        Claim::Claimed => {}
        Claim::Replay { status, headers, sealed } => {
            return match secret.open(&sealed) {
                Some(body) => Ok(replay(status, headers, body)),
                None => Err(ApiError::internal("a stored idempotent response does not open").into_response()),
            }
        }
        Claim::Mismatch => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used with a different request; use a new key for a new request",
            )
            .with("field", "Idempotency-Key")
            .into_response())
        }
        Claim::InUse => {
            let mut error = ApiError::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_KEY_IN_USE",
                "a request with this Idempotency-Key is still running; retry when it has answered",
            );
            error.retry_after = Some(1);
            return Err(error.into_response());
        }
    }

    let request = Request::from_parts(parts, Body::from(bytes));
    let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
    let work = async move {
        let response = next.run(request).await;
        finish(&state, &scope, &key, &secret, response).await
    };
    tokio::spawn(REQUEST_ID.scope(request_id, work)).await.map_err(|e| ApiError::internal(e).into_response())
}

/// SHA-256 over what makes two requests "the same": method, path and query, the tenant header
/// and the body.
fn fingerprint(parts: &axum::http::request::Parts, body: &Bytes) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update([0]);
    hash.update(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_default());
    hash.update([0]);
    hash.update(parts.headers.get(TENANT_HEADER).map(HeaderValue::as_bytes).unwrap_or_default());
    hash.update([0]);
    hash.update(body);
    hex::encode(hash.finalize())
}

/// What is derived from the client's key: the lookup (stored) and the sealing key (not).
struct Secret {
    lookup: String,
    key: SealingKey,
}

impl Secret {
    fn derive(scope: &str, key: &str) -> Self {
        let digest = |label: &str| {
            let mut hash = Sha256::new();
            hash.update(label);
            hash.update([0]);
            hash.update(scope);
            hash.update([0]);
            hash.update(key);
            hash.finalize()
        };
        Self { lookup: hex::encode(digest("lookup")), key: SealingKey::new(&digest("seal").into()) }
    }

    fn seal(&self, body: &[u8]) -> Vec<u8> {
        self.key.seal(rand::random(), b"", body)
    }

    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.key.open(b"", sealed)
    }
}

enum Claim {
    Claimed,
    Replay { status: i16, headers: Option<Value>, sealed: Vec<u8> },
    Mismatch,
    InUse,
}

#[derive(sqlx::FromRow)]
struct Stored {
    fingerprint: String,
    status: Option<i16>,
    headers: Option<Value>,
    body: Option<Vec<u8>>,
    expired: bool,
    abandoned: bool,
}

async fn claim(state: &AppState, scope: &str, key: &str, fingerprint: &str) -> Result<Claim, sqlx::Error> {
    let pool = state.pool();
    for _ in 0..3 {
        let inserted =
            sqlx::query("INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES ($1, $2, $3) ON CONFLICT (scope, key) DO NOTHING")
                .bind(scope)
                .bind(key)
                .bind(fingerprint)
                .execute(pool)
                .await?
                .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let stored: Option<Stored> = sqlx::query_as(
            "SELECT fingerprint, status, headers, body,
                    created_at < now() - make_interval(hours => $3) AS expired,
                    status IS NULL AND created_at < now() - make_interval(secs => $4) AS abandoned
             FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(RETENTION_HOURS as i32)
        .bind(ABANDONED_AFTER_SECS as f64)
        .fetch_optional(pool)
        .await?;
        let Some(stored) = stored else { continue };
        if stored.expired {
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND fingerprint = $3")
                .bind(scope)
                .bind(key)
                .bind(&stored.fingerprint)
                .execute(pool)
                .await?;
            continue;
        }
        if stored.fingerprint != fingerprint {
            return Ok(Claim::Mismatch);
        }
        return Ok(match (stored.status, stored.body) {
            (Some(status), Some(sealed)) => Claim::Replay { status, headers: stored.headers, sealed },
            _ if stored.abandoned => {
                // The server that claimed it died mid-request; take it over (one taker wins).
                let taken = sqlx::query(
                    "UPDATE idempotency_keys SET created_at = now()
                     WHERE scope = $1 AND key = $2 AND status IS NULL AND created_at < now() - make_interval(secs => $3)",
                )
                .bind(scope)
                .bind(key)
                .bind(ABANDONED_AFTER_SECS as f64)
                .execute(pool)
                .await?
                .rows_affected();
                if taken == 1 {
                    Claim::Claimed
                } else {
                    Claim::InUse
                }
            }
            _ => Claim::InUse,
        });
    }
    Ok(Claim::InUse)
}

fn replay(status: i16, headers: Option<Value>, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    if let Some(Value::Object(headers)) = headers {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (HeaderName::try_from(name), value.as_str().map(HeaderValue::from_str)) {
                response.headers_mut().insert(name, value);
            }
        }
    }
    response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Whether a response is final for its key. "Try again" answers are not: authentication
/// failures, rate and quota limits, and server faults.
fn is_final(status: StatusCode) -> bool {
    !(status.is_server_error() || status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS)
}

async fn finish(state: &AppState, scope: &str, key: &str, secret: &Secret, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            release(state, scope, key).await;
            return ApiError::internal(format!("reading a response body: {e}")).into_response();
        }
    };
    if is_final(parts.status) {
        let headers: Map<String, Value> = KEPT_HEADERS
            .iter()
            .filter_map(|name| Some((name.as_str().to_owned(), Value::String(parts.headers.get(name)?.to_str().ok()?.to_owned()))))
            .collect();
        let stored = sqlx::query(
            "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5, completed_at = now() WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(parts.status.as_u16() as i16)
        .bind(Value::Object(headers))
        .bind(secret.seal(&bytes))
        .execute(state.pool())
        .await;
        if let Err(e) = stored {
            // The command's effect stands; only the replay is lost. A retry would run again,
            // so say so loudly.
            tracing::error!(error = %e, "could not record an idempotent response");
        }
    } else {
        release(state, scope, key).await;
    }
    Response::from_parts(parts, Body::from(bytes))
}

async fn release(state: &AppState, scope: &str, key: &str) {
    if let Err(e) = sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL")
        .bind(scope)
        .bind(key)
        .execute(state.pool())
        .await
    {
        tracing::warn!(error = %e, "could not release an idempotency key");
    }
}

/// Forgets every record of tenant `tenant_id` (its erasure).
pub async fn forget_tenant(pool: &sqlx::PgPool, tenant_id: uuid::Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 OR scope = $1 || ':admin'")
        .bind(format!("tenant:{tenant_id}"))
        .execute(pool)
        .await?
        .rows_affected())
}

/// Forgets keys older than the retention period (run now and then).
pub async fn expire(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)")
        .bind(RETENTION_HOURS as i32)
        .execute(pool)
        .await?
        .rows_affected())
}
