//! The payment provider's webhook: `POST /v1/webhooks/payments`, authenticated by an HMAC
//! signature instead of a bearer token.
//!
//! `Payment-Signature: t=<unix seconds>,v1=<hex hmac-sha256(secret, "<t>.<raw body>")>`. A bad
//! signature, or a timestamp more than 300 s away from now, is 400; without a configured
//! secret the route is 503. Each notification `id` is processed once (the subscription records
//! it with the payment), so provider retries are harmless.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use commands::Actor;
use domain::billing::money::parse_price;
use domain::subscription::PaymentOutcome;
use hmac::{Hmac, Mac};
use projections::billing::reads::InvoiceOwner;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::ApiError;

/// The payment provider's notification, as processed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentReceived {
    /// Always `true`.
    received: bool,
    /// The notification's id.
    id: String,
    /// Whether it was processed before (nothing was done now).
    duplicate: bool,
}

/// How far a signature's timestamp may be from now.
pub const TOLERANCE_SECONDS: i64 = 300;

/// The webhook route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/webhooks/payments", post(payments))
}

fn signature_error(reason: &str) -> ApiError {
    ApiError::validation("Payment-Signature", reason)
}

/// Checks `header` against `body` signed with `secret`, `now` being the current unix time(s).
pub fn verify(secret: &str, header: &str, body: &[u8], now: &[i64]) -> Result<(), ApiError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.extend(hex::decode(v)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| signature_error("has no valid t=<unix seconds>"))?;
    if !now.iter().any(|n| (n - timestamp).abs() <= TOLERANCE_SECONDS) {
        return Err(signature_error("is too old (or from the future): more than 300 seconds from now"));
    }
    let verified = signatures.iter().any(|signature| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(signature).is_ok()
    });
    if !verified {
        return Err(signature_error("does not match the body"));
    }
    Ok(())
}

/// The notification. Providers add fields over time, so unknown fields are ignored here.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Notification {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    invoice_id: Uuid,
    #[schema(value_type = Option<String>)]
    amount: Option<Value>,
    currency: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/payments",
    tag = "billing",
    params(("Payment-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\">; 300 s tolerance")),
    request_body = Notification,
    responses(
        (status = 200, description = "Processed (or already processed: exactly once by id)", body = PaymentReceived),
        crate::openapi::Invalid,
        (status = 401, description = "UNAUTHENTICATED: bad or stale signature", body = crate::openapi::ErrorBody),
        crate::openapi::NotFound,
        (status = 503, description = "the webhook secret is not configured", body = crate::openapi::ErrorBody)
    ),
    security(()),
)]
async fn payments(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<(StatusCode, Json<PaymentReceived>), ApiError> {
    let secret = state.config().webhook_secret.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "WEBHOOKS_DISABLED",
            "payment webhooks are not configured (SAAS_LEDGER_WEBHOOK_SECRET)",
        )
    })?;
    let header = headers.get("payment-signature").and_then(|v| v.to_str().ok()).ok_or_else(|| signature_error("is missing"))?;
    // The provider signs with its real clock; with the test clock on, its time counts too.
    let mut now = vec![chrono::Utc::now().timestamp()];
    if state.manual_clock().is_some() {
        now.push(state.now().timestamp());
    }
    verify(&secret, header, &body, &now)?;

    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::malformed_json(format!("the body is not valid JSON: {e}")))?;
    let note: Notification = serde_json::from_value(value).map_err(|e| ApiError::validation("body", e.to_string()))?;
    if note.id.is_empty() || note.id.len() > 255 {
        return Err(ApiError::validation("id", "must be 1 to 255 characters"));
    }
    let outcome = match note.kind.as_str() {
        "payment.succeeded" => {
            let amount = match note.amount {
                Some(Value::String(s)) => parse_price(&s, "amount")?,
                Some(Value::Number(n)) => parse_price(&n.to_string(), "amount")?,
                _ => return Err(ApiError::validation("amount", "is required for payment.succeeded, as a decimal string")),
            };
            let currency = note.currency.ok_or_else(|| ApiError::validation("currency", "is required for payment.succeeded"))?;
            PaymentOutcome::Succeeded { amount, currency, offline: None }
        }
        "payment.failed" => PaymentOutcome::Failed,
        _ => return Err(ApiError::validation("type", "must be payment.succeeded or payment.failed")),
    };
    let owner = state.reads().billing().invoice_owner(note.invoice_id).await?;
    let InvoiceOwner { subscription_id, tenant_id, .. } = owner.ok_or_else(|| ApiError::not_found("invoice"))?;
    let context = state.context(Some(tenant_id), Actor::System("payments"));
    let app = state.clone();
    let payment_id = note.id.clone();
    let invoice_id = note.invoice_id;
    let duplicate = state
        .detach(async move {
            let committed = app.accounts().record_payment(subscription_id, payment_id, invoice_id, outcome, &context).await?;
            app.settle_all().await;
            Ok(committed.events.is_empty())
        })
        .await?;
    Ok((StatusCode::OK, Json(PaymentReceived { received: true, id: note.id, duplicate })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_with_their_timestamp() {
        let body = br#"{"id":"evt_1"}"#;
        assert!(verify("s3cret", &sign("s3cret", 1000, body), body, &[1100]).is_ok());
        assert!(verify("s3cret", &sign("s3cret", 1000, body), body, &[1301]).is_err(), "too old");
        assert!(verify("s3cret", &sign("other", 1000, body), body, &[1000]).is_err(), "wrong secret");
        assert!(verify("s3cret", &sign("s3cret", 1000, body), b"{}", &[1000]).is_err(), "other body");
        assert!(verify("s3cret", "v1=abcd", body, &[1000]).is_err(), "no timestamp");
        assert!(verify("s3cret", "t=1000,v1=zz", body, &[1000]).is_err(), "not hex");
    }
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(payments))]
pub struct Docs;
