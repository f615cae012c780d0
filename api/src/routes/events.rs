//! The ordered event log as NDJSON, for consumers that catch up (`GET /v1/events`).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The log route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[param(minimum = 0)]
    after: Option<i64>,
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// One JSON object per line, in position order. The admin sees every tenant's events (or one
/// tenant's with `X-Tenant-ID`); a tenant key sees its own. `limit` is 1 to 10000 (default
/// 1000); pass the last `position` seen as `after` to continue.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "NDJSON, one event per line: {position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at}", body = String, content_type = "application/x-ndjson"),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn events(State(state): State<AppState>, caller: Caller, ApiQuery(q): ApiQuery<EventsQuery>) -> Result<impl IntoResponse, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::validation("after", "must be a position (0 or more)"));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 10000"));
    }
    let tenant = caller.tenant_scope();
    // Payload and metadata travel as the JSON text Postgres gives, never parsed into trees: a
    // page of 10,000 events costs its text and nothing more.
    // The page streams: rows are written out in chunks as Postgres sends them, so a page of
    // 10,000 events never sits in memory whole (as rows or as text). The first chunk (or the
    // page's end) is awaited here, so a query that fails at once is still an error answer; a
    // failure later cuts the response short (chunked encoding left unfinished: the client sees
    // an error, never a silently short page).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let log = state.log().clone();
    tokio::spawn(async move {
        if let Err(e) = write_page(&log, after, limit, tenant, &tx).await {
            tracing::error!(error = %e, after, "event feed page failed");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let first = match rx.recv().await {
        Some(Err(e)) => return Err(ApiError::internal(e)),
        first => first,
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    let body = Body::from_stream(futures::stream::iter(first).chain(rest));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body))
}

/// The size at which a chunk of the page is handed to the connection.
const CHUNK: usize = 64 * 1024;

/// Reads one page and sends it to `tx` as NDJSON chunks; stops early if the client is gone.
async fn write_page(
    log: &projections::EventLog,
    after: i64,
    limit: i64,
    tenant: Option<uuid::Uuid>,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut rows = log.feed(after, limit, tenant);
    let mut chunk = Vec::with_capacity(CHUNK + 4096);
    while let Some(row) = rows.try_next().await? {
        let line = FeedLine {
            position: row.position,
            tenant_id: row.tenant_id,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            payload: serde_json::value::RawValue::from_string(row.payload)?,
            metadata: serde_json::value::RawValue::from_string(row.metadata)?,
            recorded_at: row.recorded_at,
        };
        serde_json::to_writer(&mut chunk, &line)?;
        chunk.push(b'\n');
        if chunk.len() >= CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + 4096));
            if tx.send(Ok(Bytes::from(full))).await.is_err() {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(Bytes::from(chunk))).await;
    }
    Ok(())
}

/// One line of the feed (the fields of `projections::StoredEvent`, in its order).
#[derive(serde::Serialize)]
struct FeedLine {
    position: i64,
    tenant_id: Option<uuid::Uuid>,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Box<serde_json::value::RawValue>,
    metadata: Box<serde_json::value::RawValue>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(events))]
pub struct Docs;
