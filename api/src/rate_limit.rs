//! Per-plan rate limits: each tenant API key gets a token bucket that holds its plan's
//! `rate_limit_per_minute` tokens (the burst: a client may spend a whole minute's allowance at
//! once) and refills at that many per minute. A request without a token is answered 429
//! `RATE_LIMITED` with `Retry-After` (whole seconds until a token is back). Every answer to a
//! key carries `RateLimit-Limit` and `RateLimit-Remaining`.
//!
//! Buckets live in one `UNLOGGED` Postgres table, updated by a single statement per request:
//! every server instance shares them (no N× allowance behind a load balancer), and no WAL is
//! written for them (a crash forgets the buckets, which only ever errs in the client's favour).
//! The platform admin is not limited.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::{caller_of, Caller};
use crate::error::ApiError;

/// A bucket after taking a token (or failing to).
#[derive(Debug, sqlx::FromRow)]
pub struct Bucket {
    /// Whether the request got a token.
    pub allowed: bool,
    /// Tokens left (fractional: the bucket refills continuously).
    pub tokens: f64,
}

/// Takes one token from `key_id`'s bucket of `per_minute` tokens.
pub async fn take(pool: &sqlx::PgPool, key_id: uuid::Uuid, per_minute: u32) -> Result<Bucket, sqlx::Error> {
    let capacity = f64::from(per_minute);
    let per_second = capacity / 60.0;
    sqlx::query_as(
        "INSERT INTO rate_buckets AS b (key_id, tokens, updated_at, allowed) VALUES ($1, $2 - 1, clock_timestamp(), true)
         ON CONFLICT (key_id) DO UPDATE SET
             tokens = CASE WHEN least($2, b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) * $3) >= 1
                           THEN least($2, b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) * $3) - 1
                           ELSE least($2, b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) * $3) END,
             allowed = least($2, b.tokens + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)) * $3) >= 1,
             updated_at = clock_timestamp()
         RETURNING allowed, tokens",
    )
    .bind(key_id)
    .bind(capacity)
    .bind(per_second)
    .fetch_one(pool)
    .await
}

/// The middleware.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") || !request.headers().contains_key(axum::http::header::AUTHORIZATION) {
        return next.run(request).await;
    }
    // A request that does not authenticate is refused by its handler; only known keys count.
    let (request, caller) = caller_of(request, &state).await;
    let key = match caller {
        Ok(Caller::Tenant(key)) => key,
        _ => return next.run(request).await,
    };
    let Some(per_minute) = key.rate_limit_per_minute.and_then(|l| u32::try_from(l).ok()).filter(|l| *l > 0) else {
        return next.run(request).await;
    };
    let bucket = match take(state.pool(), key.key_id, per_minute).await {
        Ok(bucket) => bucket,
        // The limiter failing must not take the API down with it: let the request through.
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; request let through");
            return next.run(request).await;
        }
    };
    let mut response = if bucket.allowed {
        next.run(request).await
    } else {
        let per_second = f64::from(per_minute) / 60.0;
        let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64;
        metrics::counter!("saas_ledger_rate_limited_total").increment(1);
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!("this key may send {per_minute} requests per minute; retry in {wait} s"),
        )
        .with("limit_per_minute", per_minute)
        .with("retry_after_seconds", wait);
        error.retry_after = Some(wait);
        error.into_response()
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(per_minute));
    headers.insert("ratelimit-remaining", HeaderValue::from(bucket.tokens.max(0.0).floor() as u64));
    response
}
