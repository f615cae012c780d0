//! Read-your-writes, with the wait on the read side.
//!
//! A command answers as soon as its events are committed, with `Ledger-Position: <n>` (the
//! position of its last event). It does not wait for read models its caller may never read:
//! the read that needs them waits instead. Before a read by a tenant (its key, or the admin
//! naming it in `X-Tenant-ID`) runs, this layer looks up the tenant's last position in the
//! log (one index probe, so it covers commands answered by any instance) and waits until every
//! live read model has applied it; an admin read without a tenant waits for the head of the
//! log. A read may also send `Ledger-Position: <n>` (say, one another tenant's command
//! answered) to wait for that position: past [`EXPLICIT_WAIT`] it answers 503 `STALE_READ`
//! with `Retry-After: 1`. Reads answer with the `Ledger-Position` they reflect.
//!
//! This is the session-token scheme of Zanzibar's zookies or Cosmos DB's session tokens, with
//! the server finding the token itself so that clients need do nothing.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::auth::{caller_of, Caller};
use crate::error::ApiError;

/// The header, on answers and on reads.
pub const LEDGER_POSITION: &str = "ledger-position";

/// How long a read that names a position waits for the read models (then 503 `STALE_READ`).
pub const EXPLICIT_WAIT: Duration = Duration::from_secs(5);

/// How long a read waits for its own tenant's writes before it is served anyway (a read model
/// that is stuck on a bad event must not take every read of a tenant down; the lag shows in
/// `/v1/admin/projections` and the metrics).
const IMPLICIT_WAIT: Duration = Duration::from_secs(10);

/// What the current request's commands did.
#[derive(Debug, Default)]
struct Record {
    /// The highest position appended.
    position: AtomicI64,
    /// Whether one of them changed who may do what (see [`crate::auth::KeyCache`]).
    access_changed: AtomicBool,
}

tokio::task_local! {
    static APPENDED: Arc<Record>;
    /// The replica the current read is served from, when the layer chose one.
    static READ_FROM: sqlx::PgPool;
}

/// The replica the current read is served from (see [`layer`]); `None`: the primary.
pub fn read_from() -> Option<sqlx::PgPool> {
    READ_FROM.try_with(Clone::clone).ok()
}

/// Counts a read by where it was served (`saas_ledger_reads_total{source}`).
pub fn served_by(replica: bool) {
    metrics::counter!("saas_ledger_reads_total", "source" => if replica { "replica" } else { "primary" }).increment(1);
}

/// Records that the current request appended up to `position` (the commit hook of every
/// command store).
pub fn appended(position: i64) {
    let _ = APPENDED.try_with(|r| r.position.fetch_max(position, Ordering::Relaxed));
}

/// Records that the current request changed who may do what: its answer waits until no
/// instance can still hold an API-key lookup from before.
pub fn access_changed() {
    let _ = APPENDED.try_with(|r| r.access_changed.store(true, Ordering::Relaxed));
}

/// Runs `work` with the current request's record of appended positions, so that work moved
/// onto a task of its own still reports what it appended.
pub fn carry<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    let record = APPENDED.try_with(Clone::clone).unwrap_or_default();
    APPENDED.scope(record, work)
}

/// Routes that read the log itself, not read models (nothing to wait for), and routes that
/// check their own snapshot in one statement ([`read_own_writes`]).
fn waits_by_itself(path: &str) -> bool {
    path == "/v1/events" || path.starts_with("/v1/aggregates/") || path == "/v1/quota" || path.starts_with("/v1/quota/")
}

/// A tenant's read in one statement that also returns the position of the tenant's last event
/// from the same snapshot: if every read model here had applied that position before the
/// statement began, its snapshot holds all of them and the answer stands (one statement
/// instead of a look-up and then the read); otherwise it waits for the models and reads again.
pub async fn read_own_writes<T, F, Fut>(state: &AppState, read: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(T, i64), ApiError>>,
{
    Ok(read_own_writes_at(state, read).await?.0)
}

/// [`read_own_writes`], also telling the tenant's last position when the answer was read with
/// every read model at or past it (`None` when it had to wait: the second read is served as
/// it is).
pub async fn read_own_writes_at<T, F, Fut>(state: &AppState, read: F) -> Result<(T, Option<i64>), ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(T, i64), ApiError>>,
{
    let applied = state.projections().applied();
    let (value, own) = read().await?;
    appended(own);
    if own <= applied {
        return Ok((value, Some(own)));
    }
    if !state.projections().wait_for(own, IMPLICIT_WAIT).await {
        tracing::warn!(position = own, "read models did not reach a tenant's last position in time; served as they are");
    }
    Ok((read().await?.0, None))
}

/// The middleware.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let asked = match request.headers().get(LEDGER_POSITION) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).filter(|p| *p >= 0) {
            Some(position) => Some(position),
            None => return ApiError::validation("Ledger-Position", "must be a log position (a whole number, 0 or more)").into_response(),
        },
    };
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    let (request, own) = if is_read && !waits_by_itself(request.uri().path()) {
        let (request, caller) = caller_of(request, &state).await;
        // A request that does not authenticate is refused by its handler; nothing to wait for.
        let scope = match &caller {
            Ok(Caller::Tenant(key)) => Some(Some(key.tenant_id)),
            Ok(Caller::Admin { acting_for }) => Some(*acting_for),
            Err(_) if request.headers().contains_key(axum::http::header::AUTHORIZATION) => None,
            Err(_) => Some(None),
        };
        let own = match scope {
            Some(tenant) => match last_position(&state, tenant).await {
                Ok(position) => position,
                Err(e) => return e.into_response(),
            },
            None => 0,
        };
        (request, own)
    } else {
        (request, 0)
    };
    // A replica whose read models already reflect everything this read must serves it, without
    // waiting; if it fails the read (gone, or a query cancelled by its replay), the primary
    // serves it after all.
    let mut request = request;
    let path = request.uri().path().to_owned();
    if is_read && !waits_by_itself(&path) && !state.replicas().is_empty() {
        let needed = own.max(asked.unwrap_or(0));
        if let Some(replica) = state.replicas().serving(needed).cloned() {
            let (parts, body) = request.into_parts();
            let again = Request::from_parts(parts.clone(), axum::body::Body::empty());
            let record = Arc::new(Record::default());
            let served = READ_FROM.scope(replica.clone(), APPENDED.scope(record, next.clone().run(Request::from_parts(parts, body)))).await;
            if !served.status().is_server_error() {
                served_by(true);
                let mut served = served;
                if needed > 0 && served.status().is_success() {
                    served.headers_mut().insert(LEDGER_POSITION, HeaderValue::from(needed));
                }
                return served;
            }
            tracing::warn!(status = %served.status(), "a read on a replica failed; the primary serves it");
            state.replicas().failed(&replica);
            request = again;
        }
    }
    if is_read && !waits_by_itself(&path) {
        served_by(false);
    }
    if let Some(asked) = asked.filter(|asked| is_read && *asked > own) {
        if !state.projections().wait_for(asked, EXPLICIT_WAIT).await {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STALE_READ",
                format!("the read models have not reached position {asked} yet; retry shortly"),
            )
            .with("ledger_position", asked);
            error.retry_after = Some(1);
            return error.into_response();
        }
    }
    if own > 0 && !state.projections().wait_for(own, IMPLICIT_WAIT).await {
        tracing::warn!(position = own, "read models did not reach a tenant's last position in time; served as they are");
    }
    let reflects = if is_read { own.max(asked.unwrap_or(0)) } else { 0 };
    let record = Arc::new(Record::default());
    let mut response = APPENDED.scope(record.clone(), next.run(request)).await;
    if record.access_changed.load(Ordering::Relaxed) {
        tokio::time::sleep(state.keys().lease()).await;
    }
    let position = record.position.load(Ordering::Relaxed).max(reflects);
    if position > 0 && response.status().is_success() {
        response.headers_mut().insert(LEDGER_POSITION, HeaderValue::from(position));
    }
    response
}

/// The position of `tenant`'s last event (`None`: the head of the whole log).
async fn last_position(state: &AppState, tenant: Option<uuid::Uuid>) -> Result<i64, ApiError> {
    let position: Option<i64> = match tenant {
        Some(tenant) => state.log().tenant_head(tenant).await?,
        None => Some(state.log().head().await?),
    };
    Ok(position.unwrap_or(0))
}
