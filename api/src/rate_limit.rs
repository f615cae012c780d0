//! Per-plan rate limits: each tenant API key may send its plan's `rate_limit_per_minute`
//! requests a minute, with a burst of a whole minute's allowance at once (GCRA, the
//! `governor` crate: equivalent to a token bucket that refills continuously). A request beyond
//! it is answered 429 `RATE_LIMITED` with `Retry-After` (whole seconds until it would pass).
//! Every answer to a key carries `RateLimit-Limit` and `RateLimit-Remaining`.
//!
//! The limiters live in this process's memory: no statement per request. With several
//! instances, each one enforces `limit / SAAS_LEDGER_RATE_LIMIT_INSTANCES` (rounded up) of the
//! requests it receives: set that to the number of instances when the load balancer spreads a
//! key's requests evenly, and leave it at 1 when it routes each key to one instance (by the
//! `Authorization` header). A restart forgets the limiters, which only ever errs in the
//! client's favour. The platform admin is not limited.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{caller_of, Caller};
use crate::error::ApiError;

type Limiter = DefaultDirectRateLimiter<StateInformationMiddleware>;

/// Most keys kept; past that, idle ones are forgotten (a forgotten limiter is a full one).
const MAX_KEYS: usize = 100_000;

/// The limiters of this process, one per API key.
#[derive(Default)]
pub struct RateLimits {
    /// Each instance's share: `limit / instances`, rounded up.
    instances: u32,
    keys: Mutex<HashMap<Uuid, (u32, Arc<Limiter>)>>,
}

/// The outcome of one request's check.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    /// Let through; requests left in the burst.
    Allowed { remaining: u32 },
    /// Refused; seconds until one would pass.
    Refused { retry_after: u64 },
}

impl RateLimits {
    /// Limiters for one of `instances` instances.
    pub fn new(instances: u32) -> Self {
        Self { instances: instances.max(1), keys: Mutex::default() }
    }

    /// This instance's share of `per_minute`.
    pub fn share(&self, per_minute: u32) -> u32 {
        per_minute.div_ceil(self.instances).max(1)
    }

    /// Takes one request from `key_id`'s allowance of `per_minute`.
    pub fn check(&self, key_id: Uuid, per_minute: u32) -> Decision {
        let per_minute = self.share(per_minute);
        let limiter = {
            let mut keys = self.keys.lock().expect("not poisoned");
            if keys.len() >= MAX_KEYS && !keys.contains_key(&key_id) {
                keys.clear();
            }
            let entry = keys.entry(key_id).or_insert_with(|| (per_minute, Arc::new(limiter(per_minute))));
            if entry.0 != per_minute {
                // The plan changed: start the new allowance afresh.
                *entry = (per_minute, Arc::new(limiter(per_minute)));
            }
            entry.1.clone()
        };
        match limiter.check() {
            Ok(state) => Decision::Allowed { remaining: state.remaining_burst_capacity() },
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision::Refused { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
            }
        }
    }
}

fn limiter(per_minute: u32) -> Limiter {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::direct(Quota::per_minute(per_minute)).with_middleware::<StateInformationMiddleware>()
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
    let limits = state.rate_limits();
    let share = limits.share(per_minute);
    let (mut response, remaining) = match limits.check(key.key_id, per_minute) {
        Decision::Allowed { remaining } => (next.run(request).await, remaining),
        Decision::Refused { retry_after } => {
            metrics::counter!("saas_ledger_rate_limited_total").increment(1);
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("this key may send {share} requests per minute; retry in {retry_after} s"),
            )
            .with("limit_per_minute", share)
            .with("retry_after_seconds", retry_after);
            error.retry_after = Some(retry_after);
            (error.into_response(), 0)
        }
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(share));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    response
}
