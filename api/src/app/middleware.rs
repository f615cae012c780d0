//! The router and the layers every request passes, outermost last: a usable request id, the
//! contract's error body on every error whoever produced it, NUL refusal, body limits, the
//! request timeout, panics as 500 `INTERNAL`, metrics, rate limits, idempotency and
//! read-your-writes.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use super::AppState;
use crate::error::{ApiError, REQUEST_ID};
use crate::routes;

/// Request ids: UUIDv7, so they sort by time in logs.
#[derive(Debug, Clone, Copy)]
struct UuidV7Ids;

impl MakeRequestId for UuidV7Ids {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only if it is a sane token (1-128 of `[A-Za-z0-9._:-]`);
/// otherwise one is generated, so logs and event metadata never carry junk.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = request.headers().get("x-request-id").is_some_and(|v| {
        let bytes = v.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
    });
    if !usable {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// Refuses a path or query string carrying an encoded NUL (`%00`): no identifier or filter
/// contains one, and Postgres text cannot hold one (it would surface as a 500).
async fn refuse_nul(request: Request, next: Next) -> Response {
    let raw = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or_default();
    if raw.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0') {
        let part = if request.uri().path().contains("%00") { "path" } else { "query" };
        return ApiError::validation(part, "must not contain a NUL character (%00)").into_response();
    }
    next.run(request).await
}

/// Makes every error response, whoever produced it (router, body limit, timeout, panic),
/// carry the contract's JSON error body, and scopes the request id for handlers. A body too
/// large, whichever layer measured it, is answered naming the limit.
async fn contract_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    REQUEST_ID
        .scope(request_id, async move {
            let response = next.run(request).await;
            let status = response.status();
            // Our own answers: the API's JSON errors, and the console's error pages.
            let ours = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html"));
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                return ApiError::too_large(state.config().max_body_bytes).into_response();
            }
            if status.as_u16() < 400 || ours {
                return response;
            }
            let allow = response.headers().get(header::ALLOW).cloned();
            let mut replaced = ApiError::for_status(status).into_response();
            if let Some(allow) = allow {
                replaced.headers_mut().insert(header::ALLOW, allow);
            }
            replaced
        })
        .await
}

pub(crate) fn router(state: AppState) -> Router {
    let config = state.config().clone();
    routes::router(state.clone())
        .route("/metrics", axum::routing::get(crate::metrics::render).with_state(state.clone()))
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn_with_state(state.clone(), crate::consistency::layer))
        .layer(middleware::from_fn_with_state(state.clone(), crate::idempotency::layer))
        .layer(middleware::from_fn_with_state(state.clone(), crate::rate_limit::layer))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.request_timeout))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("a handler panicked").into_response()))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(middleware::from_fn(refuse_nul))
        .layer(middleware::from_fn_with_state(state, contract_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(UuidV7Ids))
        .layer(middleware::from_fn(drop_unusable_request_id))
}
