//! Usage metering: recording facts (one, or up to 1000 at once) and reading time series.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use domain::usage::{parse_idempotency_key, parse_quantity, MetricName, RecordUsage};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{TenantCaller, UsageCaller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};

/// The usage routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/usage", post(record).get(series)).route("/v1/usage/batch", post(record_batch))
}

/// Most records in one batch.
pub const MAX_BATCH: usize = 1000;

/// One usage fact as sent.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UsageBody {
    /// The metric: `api_calls`, `sms`, `storage_bytes`, `tickets`, or one the tenant's plan prices
    /// with a charge (anything else is refused, so a misspelt metric is never stored and billed
    /// as nothing).
    #[schema(pattern = "^[a-z][a-z0-9_]{0,63}$", example = "api_calls")]
    metric: String,
    /// Whole units, 0 to 10^15.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    quantity: i64,
    /// The fact's identity: a key recorded before is answered as a duplicate and counted once.
    #[schema(pattern = "^[!-~]{1,255}$", min_length = 1, max_length = 255, example = "req-2027-01-05-0001")]
    idempotency_key: String,
    /// When it happened (RFC 3339; default: now). At most 5 minutes ahead of the server's
    /// clock and at most 35 days behind it: a fact in a period already invoiced is billed on
    /// the next invoice (a cancelled subscription's, on a final one), an older one is refused.
    occurred_at: Option<DateTime<Utc>>,
}

/// When a cancelled tenant's subscription ended: only usage that occurred before then is
/// still accepted (late facts of its last periods, billed on a final invoice).
async fn cancelled_at(state: &AppState, tenant_id: uuid::Uuid) -> Result<Option<DateTime<Utc>>, ApiError> {
    Ok(sqlx::query_scalar::<_, Option<DateTime<Utc>>>("SELECT cancelled_at FROM rm.subscriptions WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(state.pool())
        .await?
        .flatten())
}

/// Refuses a cancelled tenant's fact unless it occurred before the cancellation.
fn before_cancellation(fact: RecordUsage, cancelled_at: Option<DateTime<Utc>>) -> Result<RecordUsage, ApiError> {
    match cancelled_at {
        Some(at) if fact.occurred_at < at => Ok(fact),
        Some(at) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "TENANT_CANCELLED",
            format!("the tenant is cancelled; only usage that occurred before its cancellation ({}) is still accepted", at.to_rfc3339()),
        )),
        None => Err(ApiError::new(StatusCode::FORBIDDEN, "TENANT_CANCELLED", "the tenant is cancelled")),
    }
}

/// The metrics the tenant's plan prices with its own charges (read only when a record names a
/// metric that is not built in).
async fn plan_metrics(state: &AppState, tenant_id: uuid::Uuid, names: &[&str]) -> Result<Vec<String>, ApiError> {
    if names.iter().all(|m| MetricName::is_built_in(m)) {
        return Ok(Vec::new());
    }
    let metrics: Option<sqlx::types::Json<Vec<String>>> =
        sqlx::query_scalar("SELECT jsonb_path_query_array(state, '$.plan.charges[*].metric') FROM rm.subscriptions WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(state.pool())
            .await?;
    Ok(metrics.map(|m| m.0).unwrap_or_default())
}

impl UsageBody {
    fn parse(self, caller: &TenantCaller, now: DateTime<Utc>, plan_metrics: &[String]) -> Result<RecordUsage, ApiError> {
        Ok(RecordUsage {
            tenant_id: caller.tenant_id,
            metric: MetricName::known(&self.metric, plan_metrics)?,
            quantity: parse_quantity(self.quantity)?,
            idempotency_key: parse_idempotency_key(&self.idempotency_key)?,
            occurred_at: self.occurred_at.unwrap_or(now),
            at: now,
        })
    }
}

/// `POST /v1/usage` → 202 `{accepted: true, duplicate}`. A key recorded before is accepted
/// again as a duplicate and counted once. `occurred_at` may lie up to 35 days back (late usage
/// is billed on the next invoice); a cancelled tenant may still record usage that occurred
/// before its cancellation (billed on a final invoice), anything later is 403
/// `TENANT_CANCELLED`.
#[utoipa::path(
    post,
    path = "/v1/usage",
    tag = "usage",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = UsageBody,
    responses(
        (status = 202, description = "{accepted: true, duplicate}: a repeated idempotency_key is counted once", body = crate::schemas::UsageAccepted),
        crate::openapi::CommandErrors,
        (status = 429, description = "QUOTA_EXCEEDED (details: metric, limit, used), RATE_LIMITED; RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After)", body = crate::openapi::ErrorBody)
    ),
)]
async fn record(
    State(state): State<AppState>,
    UsageCaller { caller, cancelled }: UsageCaller,
    ApiJson(body): ApiJson<UsageBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let known = plan_metrics(&state, caller.tenant_id, &[body.metric.as_str()]).await?;
    let mut fact = body.parse(&caller, state.now(), &known)?;
    if cancelled {
        fact = before_cancellation(fact, cancelled_at(&state, caller.tenant_id).await?)?;
    }
    let context = state.context(Some(caller.tenant_id), caller.actor);
    let app = state.clone();
    let duplicate = state
        .detach(async move {
            // Answered on commit: the reads that show usage wait for it (see `consistency`).
            let recorded = app.usage().record(fact, &context).await?;
            Ok(recorded.duplicate)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": true, "duplicate": duplicate }))))
}

/// One accepted fact of a batch.
struct Accepted {
    duplicate: bool,
}

/// A batch: `{"records": [...]}` or a bare array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BatchBody {
    Wrapped { records: Vec<Value> },
    Bare(Vec<Value>),
}

/// `POST /v1/usage/batch`: up to 1000 records, each accepted or refused on its own →
/// 202 `{accepted, duplicates, refused, results: [{index, accepted, duplicate, error}]}`.
#[utoipa::path(
    post,
    path = "/v1/usage/batch",
    tag = "usage",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = crate::openapi::UsageBatch,
    responses(
        (status = 202, description = "Per-record results, in order (202 even when some records are refused: each is answered on its own)", body = BatchAnswer),
        crate::openapi::CommandErrors
    ),
)]
async fn record_batch(
    State(state): State<AppState>,
    UsageCaller { caller, cancelled }: UsageCaller,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    let records = match body {
        BatchBody::Wrapped { records } | BatchBody::Bare(records) => records,
    };
    if records.is_empty() || records.len() > MAX_BATCH {
        return Err(ApiError::validation("records", format!("must hold 1 to {MAX_BATCH} records")));
    }
    let now = state.now();
    let context = state.context(Some(caller.tenant_id), caller.actor.clone());
    let cancelled_at = if cancelled { Some(cancelled_at(&state, caller.tenant_id).await?) } else { None };
    let names: Vec<&str> = records.iter().filter_map(|r| r.get("metric").and_then(Value::as_str)).collect();
    let known = plan_metrics(&state, caller.tenant_id, &names).await?;
    let parsed: Vec<Result<RecordUsage, ApiError>> = records
        .into_iter()
        .map(|r| {
            let fact = serde_json::from_value::<UsageBody>(r)
                .map_err(|e| ApiError::validation("record", e.to_string()))
                .and_then(|b| b.parse(&caller, now, &known))?;
            match cancelled_at {
                Some(at) => before_cancellation(fact, at),
                None => Ok(fact),
            }
        })
        .collect();
    let app = state.clone();
    let results = state
        .detach(async move {
            // The parsed records go to the store together (one event; a key repeated within the
            // batch is recorded by its first occurrence, see `Usage::record_batch`); refused
            // records are answered without it.
            let mut outcomes: Vec<(usize, Result<Accepted, ApiError>)> = Vec::with_capacity(parsed.len());
            let mut facts = Vec::new();
            for (index, fact) in parsed.into_iter().enumerate() {
                match fact {
                    Ok(fact) => {
                        outcomes.push((index, Ok(Accepted { duplicate: false })));
                        facts.push((index, fact));
                    }
                    Err(e) => outcomes.push((index, Err(e))),
                }
            }
            let indexes: Vec<usize> = facts.iter().map(|(index, _)| *index).collect();
            let recorded = app.usage().record_batch(facts.into_iter().map(|(_, f)| f).collect(), &context).await;
            for (index, outcome) in indexes.into_iter().zip(recorded.outcomes) {
                outcomes[index].1 = outcome.map(|duplicate| Accepted { duplicate }).map_err(ApiError::from);
            }
            Ok(outcomes)
        })
        .await?;
    let (mut accepted, mut duplicates, mut refused) = (0, 0, 0);
    let results: Vec<RecordResult> = results
        .into_iter()
        .map(|(index, outcome)| match outcome {
            Ok(Accepted { duplicate, .. }) => {
                accepted += 1;
                duplicates += usize::from(duplicate);
                RecordResult { index, accepted: true, duplicate: Some(duplicate), error: None }
            }
            Err(e) => {
                refused += 1;
                let error = json!({"code": e.code, "message": e.message, "details": e.details});
                RecordResult { index, accepted: false, duplicate: None, error: Some(error) }
            }
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(BatchAnswer { accepted, duplicates, refused, results })))
}

/// The answer to a batch (serialised as it is, without an intermediate JSON tree).
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    /// Records accepted now (duplicates included).
    accepted: usize,
    /// Accepted records whose key was recorded before (counted once, then).
    duplicates: usize,
    /// Records refused.
    refused: usize,
    /// Each record's outcome, in the request's order.
    results: Vec<RecordResult>,
}

/// One record's outcome: `duplicate` when accepted, `error` when refused.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RecordResult {
    /// The record's index in the request.
    index: usize,
    /// Whether it was accepted.
    accepted: bool,
    /// When accepted: whether its key was recorded before.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    /// When refused: why, in the contract's error shape (`{code, message, details}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::openapi::ErrorDetail>)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SeriesQuery {
    #[param(pattern = "^[a-z][a-z0-9_]{0,63}$")]
    metric: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    #[param(pattern = "^(hour|day|month)$")]
    granularity: Option<String>,
}

/// `GET /v1/usage?metric&from&to&granularity=hour|day|month` → buckets (UTC) with each
/// metric's total (counters) or latest value (gauges). Defaults: the last 30 days, by day.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(SeriesQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "Usage per hour, day or month", body = crate::schemas::UsageSeries),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn series(State(state): State<AppState>, caller: TenantCaller, ApiQuery(q): ApiQuery<SeriesQuery>) -> Result<Json<Value>, ApiError> {
    let granularity = q.granularity.as_deref().unwrap_or("day");
    if !["hour", "day", "month"].contains(&granularity) {
        return Err(ApiError::validation("granularity", "must be hour, day or month"));
    }
    let metric = q.metric.as_deref().map(MetricName::parse).transpose()?;
    let to = q.to.unwrap_or_else(|| state.now());
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    let rows: Vec<(String, String, DateTime<Utc>, Decimal, i64, i64)> = sqlx::query_as(
        "SELECT metric, kind, date_trunc($4, hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket,
                sum(total), sum(facts)::bigint,
                (array_agg(last_value ORDER BY last_at DESC))[1]
         FROM rm.usage_hourly
         WHERE tenant_id = $1 AND ($2::text IS NULL OR metric = $2) AND hour >= date_trunc('hour', $3::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AND hour < $5
         GROUP BY metric, kind, bucket ORDER BY metric, bucket",
    )
    .bind(caller.tenant_id)
    .bind(metric.as_ref().map(|m| m.as_str()))
    .bind(from)
    .bind(granularity)
    .bind(to)
    .fetch_all(state.pool())
    .await?;
    let step = |start: DateTime<Utc>| match granularity {
        "hour" => start + chrono::Duration::hours(1),
        "day" => start + chrono::Duration::days(1),
        _ => domain::billing::period::add_months(start, 1),
    };
    let buckets: Vec<Value> = rows
        .into_iter()
        .map(|(metric, kind, start, total, facts, last)| {
            let value = if kind == "gauge" { Decimal::from(last) } else { total };
            json!({"metric": metric, "kind": kind, "start": start, "end": step(start), "value": value.normalize(), "facts": facts})
        })
        .collect();
    Ok(Json(json!({"granularity": granularity, "from": from, "to": to, "buckets": buckets})))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(record, record_batch, series))]
pub struct Docs;
