//! Usage metering: one aggregate per usage fact (and one per batch of facts, see
//! [`UsageBatch`]).
//!
//! A usage fact's stream is keyed by `<tenant>:<idempotency_key>` and holds exactly one
//! event. That choice gives two properties for free: recording costs the same whether the
//! tenant has a thousand or a million facts behind it (loading the aggregate reads an empty
//! or one-event stream), and a fact is counted once, ever: a retry finds the stream taken, and
//! of concurrent retries the event store's primary key lets exactly one append win.
//! Totals per period (quota, billing, analytics) are read models over these facts.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod corrections;
pub mod metrics;
pub mod quantity;

pub use quantity::{parse_quantity, MAX_QUANTITY, MAX_SCALE};

use crate::values::string_value;
use crate::{Rejection, RejectionKind, ValidationError};

string_value!(
    /// A metric's name: `[a-z][a-z0-9_]{0,63}` (`api_calls`, `storage_bytes`, `sms`, ...).
    MetricName
);

impl MetricName {
    /// Parses a metric name.
    pub fn parse(input: &str) -> Result<Self, ValidationError> {
        let ok = (1..=64).contains(&input.len())
            && input.as_bytes()[0].is_ascii_lowercase()
            && input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(ValidationError::new("metric", "must be a metric name such as \"api_calls\" ([a-z][a-z0-9_]*, at most 64)"));
        }
        Ok(Self(input.to_owned()))
    }

    /// A metric a tenant may record: a built-in one (see [`BUILT_IN_METRICS`]), one of the
    /// catalog or one its plan prices (`plan_metrics`, with the catalog's that its plan names);
    /// a misspelt name would otherwise be stored and billed as nothing.
    pub fn known(input: &str, plan_metrics: &[String]) -> Result<Self, ValidationError> {
        let metric = Self::parse(input)?;
        if !BUILT_IN_METRICS.contains(&metric.as_str()) && !plan_metrics.iter().any(|m| m == input) {
            let mut names: Vec<String> = BUILT_IN_METRICS.iter().map(|m| (*m).to_owned()).collect();
            for metric in plan_metrics {
                if !names.contains(metric) {
                    names.push(metric.clone());
                }
            }
            return Err(ValidationError::new(
                "metric",
                format!(
                    "unknown metric \"{input}\": the metrics are {}",
                    names.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(metric)
    }

    /// Whether every plan knows it.
    pub fn is_built_in(input: &str) -> bool {
        BUILT_IN_METRICS.contains(&input)
    }
}

/// How a metric's facts combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::MetricKind))]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Facts add up (`api_calls`, `sms`).
    #[default]
    Counter,
    /// The latest fact is the value (`storage_bytes`; a `last` metric).
    Gauge,
    /// The largest fact is the value (a `max` metric).
    #[serde(rename = "max")]
    Max,
    /// The distinct values count (a `unique_count` metric; each fact's quantity is 1).
    #[serde(rename = "unique")]
    Unique,
}

impl MetricKind {
    /// Its name in the log and the read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Max => "max",
            Self::Unique => "unique",
        }
    }
}

/// The longest `value` a `unique_count` fact may carry.
pub const MAX_VALUE_LENGTH: usize = 255;

/// Checks a `unique_count` fact's value: 1 to 255 characters.
pub fn parse_value(value: &str) -> Result<String, ValidationError> {
    if value.is_empty() || value.chars().count() > MAX_VALUE_LENGTH || value.chars().any(char::is_control) {
        return Err(ValidationError::new("value", format!("must be 1 to {MAX_VALUE_LENGTH} characters (no control characters)")));
    }
    Ok(value.to_owned())
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
pub fn parse_idempotency_key(key: &str) -> Result<String, ValidationError> {
    if !(1..=255).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::new("idempotency_key", "must be 1 to 255 visible ASCII characters"));
    }
    Ok(key.to_owned())
}

/// The aggregate id of a usage fact.
pub fn usage_id(tenant_id: Uuid, idempotency_key: &str) -> String {
    format!("{tenant_id}:{idempotency_key}")
}

/// One usage fact's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::UsageFact))]
pub struct UsageFact {
    /// Whether it was recorded.
    pub recorded: bool,
    /// What was recorded under the key, to tell a resend (answered as a duplicate) from a
    /// reuse of the key for another fact (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fact: Option<RecordedFact>,
}

/// What a usage fact recorded: the parts a resend must repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::RecordedFact))]
pub struct RecordedFact {
    /// Which metric.
    pub metric: MetricName,
    /// How the metric's facts combine (as recorded).
    #[serde(default)]
    pub kind: MetricKind,
    /// How much.
    #[serde(with = "quantity")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub quantity: Decimal,
    /// The value counted (a `unique_count` metric's fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// Record a fact.
#[derive(Debug, Clone)]
pub struct RecordUsage {
    /// Whose.
    pub tenant_id: Uuid,
    /// Which metric.
    pub metric: MetricName,
    /// How the metric's facts combine (from its definition).
    pub kind: MetricKind,
    /// How much (1 for a `unique_count` fact).
    pub quantity: Decimal,
    /// The value counted (a `unique_count` metric's fact; none for any other).
    pub value: Option<String>,
    /// The client's key for this fact.
    pub idempotency_key: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Whether the client stated `occurred_at` (otherwise it is when the fact was received,
    /// which a resend cannot repeat).
    pub occurred_at_stated: bool,
    /// When it was received.
    pub at: DateTime<Utc>,
}

/// Usage events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum UsageEvent {
    /// A usage fact was accepted.
    UsageRecorded {
        /// Whose.
        tenant_id: Uuid,
        /// Which metric.
        metric: MetricName,
        /// Counter or gauge.
        kind: MetricKind,
        /// How much.
        #[serde(with = "quantity")]
        quantity: Decimal,
        /// The value counted (a `unique_count` metric's fact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// The client's key.
        idempotency_key: String,
        /// When it happened.
        occurred_at: DateTime<Utc>,
        /// When it was received.
        recorded_at: DateTime<Utc>,
    },
}

impl DomainEvent for UsageEvent {
    fn event_type(&self) -> String {
        "UsageRecorded".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Usage refusals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The idempotency key was recorded with another metric, quantity or `occurred_at`: a
    /// client bug (two facts under one key), never answered as a duplicate.
    #[error("idempotency_key \"{key}\" was recorded with another fact ({} {} at {}); a correction is not a resend", .recorded.metric, .recorded.value.clone().unwrap_or_else(|| .recorded.quantity.to_string()), .recorded.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))]
    KeyReused {
        /// The key.
        key: String,
        /// What it was recorded with.
        recorded: RecordedFact,
    },
}

impl Rejection for UsageError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::KeyReused { .. } => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::KeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Invalid(e) => e.details(),
            Self::KeyReused { recorded, .. } => {
                let mut details = serde_json::Map::new();
                details.insert("field".to_owned(), "idempotency_key".into());
                details.insert("recorded".to_owned(), serde_json::to_value(recorded).unwrap_or_default());
                details
            }
        }
    }
}

/// The metrics every plan knows: `api_calls` (the plan's monthly allowance, overage billed),
/// `sms` (billed per message), `storage_bytes` (a gauge, against the plan's storage) and
/// `tickets`.
pub const BUILT_IN_METRICS: [&str; 4] = ["api_calls", "sms", "storage_bytes", "tickets"];

/// How far in the future a fact's `occurred_at` may lie (clock skew).
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 300;

/// How far in the past a fact's `occurred_at` may lie when it is recorded (Stripe's window for
/// meter events): late facts within it are billed (see the subscription's late usage), older
/// ones are refused, so that a period's usage is final this long after its end.
pub const LATE_USAGE_DAYS: i64 = 35;

impl Aggregate for UsageFact {
    const TYPE: &'static str = "Usage";
    type Command = RecordUsage;
    type Event = UsageEvent;
    type Error = UsageError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        if self.recorded {
            return match &self.fact {
                Some(recorded) if !command.repeats(recorded) => {
                    Err(UsageError::KeyReused { key: command.idempotency_key, recorded: recorded.clone() })
                }
                _ => Ok(()),
            };
        }
        let fact = command.decide()?;
        let event = UsageEvent::UsageRecorded {
            tenant_id: command.tenant_id,
            metric: fact.metric,
            kind: fact.kind,
            quantity: fact.quantity,
            value: fact.value,
            idempotency_key: fact.idempotency_key,
            occurred_at: fact.occurred_at,
            recorded_at: command.at,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let UsageEvent::UsageRecorded { metric, kind, quantity, value, occurred_at, .. } = event;
        self.recorded = true;
        self.fact = Some(RecordedFact { metric, kind, quantity, value, occurred_at });
    }
}

impl RecordUsage {
    /// Whether this command sends again what `recorded` holds: the same metric and quantity,
    /// and the same `occurred_at` when the command states one.
    pub fn repeats(&self, recorded: &RecordedFact) -> bool {
        self.metric == recorded.metric
            && (self.kind == MetricKind::Unique || self.quantity == recorded.quantity)
            && self.value == recorded.value
            && (!self.occurred_at_stated || self.occurred_at == recorded.occurred_at)
    }

    /// The fact this command records, or why it is refused: `occurred_at` at most
    /// [`MAX_FUTURE_SKEW_SECONDS`] ahead of and [`LATE_USAGE_DAYS`] behind the time it is
    /// received, the quantity within [`MAX_QUANTITY`]. The same rules for a fact recorded on
    /// its own and one in a batch.
    pub fn decide(&self) -> Result<BatchFact, UsageError> {
        if self.occurred_at > self.at + chrono::Duration::seconds(MAX_FUTURE_SKEW_SECONDS) {
            return Err(ValidationError::new("occurred_at", "must not be in the future").into());
        }
        if self.occurred_at < self.at - chrono::Duration::days(LATE_USAGE_DAYS) {
            return Err(ValidationError::new(
                "occurred_at",
                format!("must not be more than {LATE_USAGE_DAYS} days in the past (usage that old can no longer be billed)"),
            )
            .into());
        }
        let (quantity, value) = match (self.kind, &self.value) {
            (MetricKind::Unique, Some(value)) => (Decimal::ONE, Some(parse_value(value)?)),
            (MetricKind::Unique, None) => {
                return Err(ValidationError::new(
                    "value",
                    format!(
                        "{} is a unique_count metric: a fact carries a value (a string such as a user id), not a quantity",
                        self.metric
                    ),
                )
                .into());
            }
            (_, Some(_)) => {
                return Err(ValidationError::new(
                    "value",
                    format!("only a unique_count metric's fact carries a value; {} takes a quantity", self.metric),
                )
                .into());
            }
            (_, None) => (parse_quantity(self.quantity)?, None),
        };
        Ok(BatchFact {
            metric: self.metric.clone(),
            kind: self.kind,
            quantity,
            value,
            idempotency_key: self.idempotency_key.clone(),
            occurred_at: self.occurred_at,
        })
    }
}

/// The most facts one batch may hold.
pub const MAX_BATCH_FACTS: usize = 1000;

/// Many usage facts recorded together (`POST /v1/usage/batch`): one stream per batch holding
/// one event, [`UsageBatchEvent::UsageBatchRecorded`], with every fact of the batch that was
/// new. A batch is one row in the log, one audit entry and one commit, however many facts it
/// carries, where a fact recorded on its own is one of each.
///
/// A fact is still counted once, ever, across both ways in: the event store claims each
/// batched fact's [`usage_id`] in a key table in the transaction that appends the batch, and
/// refuses (as a conflict) a batch that claims a key already claimed or recorded on its own,
/// and a fact on its own whose key a batch claimed. The command layer leaves out the facts
/// whose keys were recorded before (answered as duplicates) and decides again if it lost a
/// race for a key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::UsageBatch))]
pub struct UsageBatch {
    /// How many facts it recorded (0: not recorded yet).
    pub facts: usize,
}

/// Record the facts of a batch (each already decided by [`RecordUsage::decide`], their keys
/// distinct and not recorded before).
#[derive(Debug, Clone)]
pub struct RecordUsageBatch {
    /// Whose.
    pub tenant_id: Uuid,
    /// The facts, in the request's order.
    pub facts: Vec<BatchFact>,
    /// When the batch was received.
    pub at: DateTime<Utc>,
}

/// One fact of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::BatchFact))]
pub struct BatchFact {
    /// Which metric.
    pub metric: MetricName,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// How much.
    #[serde(with = "quantity")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub quantity: Decimal,
    /// The value counted (a `unique_count` metric's fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The client's key.
    pub idempotency_key: String,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
}

/// Usage batch events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum UsageBatchEvent {
    /// Facts accepted together, in the request's order.
    UsageBatchRecorded {
        /// Whose.
        tenant_id: Uuid,
        /// When they were received.
        recorded_at: DateTime<Utc>,
        /// The facts.
        facts: Vec<BatchFact>,
    },
}

impl DomainEvent for UsageBatchEvent {
    fn event_type(&self) -> String {
        "UsageBatchRecorded".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

impl Aggregate for UsageBatch {
    const TYPE: &'static str = "UsageBatch";
    type Command = RecordUsageBatch;
    type Event = UsageBatchEvent;
    type Error = UsageError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        if self.facts > 0 {
            return Ok(());
        }
        if command.facts.is_empty() || command.facts.len() > MAX_BATCH_FACTS {
            return Err(ValidationError::new("records", format!("must hold 1 to {MAX_BATCH_FACTS} records")).into());
        }
        let mut keys = std::collections::HashSet::with_capacity(command.facts.len());
        if let Some(repeated) = command.facts.iter().find(|f| !keys.insert(f.idempotency_key.as_str())) {
            return Err(
                ValidationError::new("idempotency_key", format!("\"{}\" appears twice in one batch", repeated.idempotency_key)).into()
            );
        }
        let event = UsageBatchEvent::UsageBatchRecorded { tenant_id: command.tenant_id, recorded_at: command.at, facts: command.facts };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let UsageBatchEvent::UsageBatchRecorded { facts, .. } = event;
        self.facts = facts.len();
    }
}

#[cfg(test)]
mod tests;
