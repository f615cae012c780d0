//! Usage metering: recording facts (one, or up to 1000 at once) and reading time series.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

use domain::usage::metrics::MetricDefinition;
use domain::usage::{parse_idempotency_key, parse_quantity, MetricKind, MetricName, RecordUsage};
use projections::usage::reads::Granularity;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::amounts::Quantity;
use crate::app::AppState;
use crate::auth::{TenantCaller, UsageCaller};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::openapi::ErrorDetail;

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
    /// How much: a JSON number or a decimal string (`"2.5"`), 0 to 10^15, at most 6 decimal
    /// places (more: 400 `VALIDATION_FAILED`, `details.field = "quantity"`). Not sent for a
    /// `unique_count` metric.
    #[schema(value_type = Option<crate::amounts::QuantityInput>)]
    quantity: Option<Value>,
    /// The value a `unique_count` metric counts (a user id, ...; 1 to 255 characters): the
    /// period's figure is the number of distinct values. Only for such a metric.
    #[schema(example = "user-42", min_length = 1, max_length = 255)]
    value: Option<String>,
    /// The fact's identity: a key recorded before with the same fact is answered as a duplicate
    /// and counted once; with another metric, quantity or `occurred_at`, it is refused (409
    /// `IDEMPOTENCY_KEY_REUSED`).
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
    Ok(state.reads().billing().cancelled_at(tenant_id).await?.flatten())
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
    Ok(state.reads().billing().charged_metrics(tenant_id).await?)
}

/// A quantity as sent: a JSON number or a decimal string, in range, with at most 6 decimal
/// places; else a refusal that says so (not serde's "invalid type").
pub fn decimal_quantity(sent: &Value) -> Result<Decimal, ApiError> {
    match domain::usage::quantity::quantity_from_json(sent) {
        Some(quantity) => Ok(parse_quantity(quantity)?),
        None => Err(ApiError::validation(
            "quantity",
            format!(
                "must be a number or a decimal string from 0 to {} with at most {} decimal places, not {sent}",
                domain::usage::MAX_QUANTITY,
                domain::usage::MAX_SCALE
            ),
        )),
    }
}

/// The definitions of the metrics `names` (kept in memory once read: a built-in's, or any
/// defined one's, costs no read).
async fn definitions(state: &AppState, names: &[&str]) -> Result<HashMap<String, MetricDefinition>, ApiError> {
    let mut asked: Vec<&str> = names.iter().copied().filter(|m| MetricName::parse(m).is_ok()).collect();
    asked.sort_unstable();
    asked.dedup();
    Ok(state.usage().definitions().resolve(&asked).await?)
}

impl UsageBody {
    fn parse(
        self,
        caller: &TenantCaller,
        now: DateTime<Utc>,
        plan_metrics: &[String],
        definitions: &HashMap<String, MetricDefinition>,
    ) -> Result<RecordUsage, ApiError> {
        let metric = MetricName::known(&self.metric, plan_metrics)?;
        let kind = definitions.get(metric.as_str()).map_or(MetricKind::Counter, |d| d.aggregation.kind());
        let quantity = match (kind, &self.quantity, &self.value) {
            (MetricKind::Unique, Some(_), _) => {
                return Err(ApiError::validation(
                    "quantity",
                    format!("{metric} is a unique_count metric: a fact carries a value (a string such as a user id), not a quantity"),
                ))
            }
            (MetricKind::Unique, None, _) => Decimal::ONE,
            (_, Some(q), _) => decimal_quantity(q)?,
            (_, None, _) => return Err(ApiError::validation("quantity", "is required")),
        };
        Ok(RecordUsage {
            tenant_id: caller.tenant_id,
            metric,
            kind,
            quantity,
            value: self.value,
            idempotency_key: parse_idempotency_key(&self.idempotency_key)?,
            occurred_at: self.occurred_at.unwrap_or(now),
            occurred_at_stated: self.occurred_at.is_some(),
            at: now,
        })
    }
}

/// `POST /v1/usage` → 202 `{accepted: true, duplicate}`. A key recorded before with the same
/// fact is accepted again as a duplicate and counted once (with another fact: 409). `occurred_at` may lie up to 35 days back (late usage
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
        (status = 202, description = "{accepted: true, duplicate}: the same fact sent again under its idempotency_key is counted once", body = UsageAccepted),
        crate::openapi::CommandErrors,
        (status = 409, description = "IDEMPOTENCY_KEY_REUSED: the idempotency_key was recorded with another metric, quantity or stated occurred_at (details.recorded says which fact); IDEMPOTENCY_KEY_IN_USE", body = crate::openapi::ErrorBody),
        (status = 429, description = "QUOTA_EXCEEDED (details: metric, limit, used), RATE_LIMITED; RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After)", body = crate::openapi::ErrorBody)
    ),
)]
async fn record(
    State(state): State<AppState>,
    UsageCaller { caller, cancelled }: UsageCaller,
    ApiJson(body): ApiJson<UsageBody>,
) -> Result<(StatusCode, Json<UsageAccepted>), ApiError> {
    let known = plan_metrics(&state, caller.tenant_id, &[body.metric.as_str()]).await?;
    let definitions = definitions(&state, &[body.metric.as_str()]).await?;
    let mut fact = body.parse(&caller, state.now(), &known, &definitions)?;
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
    Ok((StatusCode::ACCEPTED, Json(UsageAccepted { accepted: true, duplicate })))
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
    let definitions = definitions(&state, &names).await?;
    let parsed: Vec<Result<RecordUsage, ApiError>> = records
        .into_iter()
        .map(|r| {
            let fact = serde_json::from_value::<UsageBody>(r)
                .map_err(|e| ApiError::validation("record", e.to_string()))
                .and_then(|b| b.parse(&caller, now, &known, &definitions))?;
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
                let error = ErrorDetail { code: e.code, message: e.message, details: Value::Object(e.details) };
                RecordResult { index, accepted: false, duplicate: None, error: Some(error) }
            }
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(BatchAnswer { accepted, duplicates, refused, results })))
}

/// What `POST /v1/usage` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageAccepted {
    /// Always `true`.
    accepted: bool,
    /// Whether the idempotency key was recorded before (then nothing was counted now).
    duplicate: bool,
}

/// One bucket of usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageBucket {
    /// The metric.
    metric: String,
    /// `counter` (summed), `gauge` (the latest value; a `last` metric), `max` (the largest) or
    /// `unique` (distinct values; a `unique_count` metric).
    #[schema(pattern = "^(counter|gauge|max|unique)$")]
    kind: String,
    /// Start of the bucket.
    start: DateTime<Utc>,
    /// End of the bucket (the series route only).
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<DateTime<Utc>>,
    /// The bucket's figure as its metric aggregates: a counter's sum, a gauge's latest value, a
    /// `max` metric's largest, a `unique_count` metric's distinct values.
    value: Quantity,
    /// How many facts.
    facts: i64,
}

/// Usage per hour, day or month.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSeries {
    /// `hour`, `day` or `month`.
    #[schema(pattern = "^(hour|day|month)$")]
    granularity: String,
    /// From (inclusive).
    from: DateTime<Utc>,
    /// To (exclusive).
    to: DateTime<Utc>,
    /// Buckets by metric, then time.
    buckets: Vec<UsageBucket>,
}

impl UsageSeries {
    /// A series of `granularity` over `[from, to)`.
    pub fn new(granularity: &str, from: DateTime<Utc>, to: DateTime<Utc>, buckets: Vec<UsageBucket>) -> Self {
        Self { granularity: granularity.to_owned(), from, to, buckets }
    }
}

impl UsageBucket {
    /// A bucket of `metric` of `kind` from `start` (to `end`, when given).
    pub fn new(metric: String, kind: String, start: DateTime<Utc>, end: Option<DateTime<Utc>>, value: Decimal, facts: i64) -> Self {
        Self { metric, kind, start, end, value: value.into(), facts }
    }
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
    error: Option<ErrorDetail>,
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
        (status = 200, description = "Usage per hour, day or month", body = UsageSeries),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn series(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> Result<Json<UsageSeries>, ApiError> {
    let granularity = q.granularity.as_deref().unwrap_or("day");
    let granularity = Granularity::parse(granularity).ok_or_else(|| ApiError::validation("granularity", "must be hour, day or month"))?;
    let metric = q.metric.as_deref().map(MetricName::parse).transpose()?;
    let to = q.to.unwrap_or_else(|| state.now());
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    if from >= to {
        return Err(ApiError::validation("from", "must be before to"));
    }
    let rows = state.reads().usage().series(caller.tenant_id, metric.as_ref().map(|m| m.as_str()), granularity, from, to).await?;
    let step = |start: DateTime<Utc>| match granularity {
        Granularity::Hour => start + chrono::Duration::hours(1),
        Granularity::Day => start + chrono::Duration::days(1),
        Granularity::Month => domain::billing::period::add_months(start, 1),
    };
    let buckets = rows
        .into_iter()
        .map(|r| {
            let value = r.value();
            let end = step(r.bucket);
            UsageBucket::new(r.metric, r.kind, r.bucket, Some(end), value, r.facts)
        })
        .collect();
    Ok(Json(UsageSeries::new(granularity.as_str(), from, to, buckets)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(record, record_batch, series))]
pub struct Docs;
