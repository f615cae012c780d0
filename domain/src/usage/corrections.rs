//! Corrections of usage facts: a fact is voided or amended by its idempotency key, as an event of
//! its own (the original fact stays in the log), with actor and reason. One stream per fact
//! (`UsageCorrection`/`<tenant>:<key>`), so of concurrent corrections each decides on the one
//! before it, and of concurrent voids exactly one succeeds.
//!
//! Allowed while the fact's `occurred_at` is at most [`LATE_USAGE_DAYS`] old (the window in which
//! late usage is still billed); a void fact can be neither voided again nor amended.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{parse_quantity, parse_value, quantity, MetricKind, MetricName, RecordedFact, LATE_USAGE_DAYS};
use crate::{Rejection, RejectionKind, ValidationError};

/// The fact a correction applies to, as it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalFact {
    /// Whose.
    pub tenant_id: Uuid,
    /// Its key.
    pub idempotency_key: String,
    /// As recorded.
    pub fact: RecordedFact,
}

/// A correction as the fact's history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::UsageCorrectionEntry))]
pub struct Correction {
    /// `void` or `amend`.
    pub kind: CorrectionKind,
    /// The quantity after it (0 for a void).
    #[serde(with = "quantity")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub quantity: Decimal,
    /// The quantity before it.
    #[serde(with = "quantity")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub previous_quantity: Decimal,
    /// The value after it (a `unique_count` fact's amendment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value before it (a `unique_count` fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_value: Option<String>,
    /// Why.
    pub reason: String,
    /// Who (`admin`, `key:<prefix>`).
    pub actor: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What a correction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::CorrectionKind))]
#[serde(rename_all = "lowercase")]
pub enum CorrectionKind {
    /// The fact no longer counts.
    Void,
    /// The fact counts with another quantity.
    Amend,
}

/// A fact's corrections so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageCorrections {
    /// The fact, once a correction was made.
    pub original: Option<OriginalFact>,
    /// Its quantity now.
    #[serde(with = "quantity")]
    pub quantity: Decimal,
    /// Its value now (a `unique_count` fact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Whether it was voided.
    pub void: bool,
    /// Every correction, oldest first.
    pub corrections: Vec<Correction>,
}

impl UsageCorrections {
    /// `recorded`, `amended` or `void`.
    pub fn status(&self) -> &'static str {
        match (self.void, self.corrections.is_empty()) {
            (true, _) => "void",
            (false, true) => "recorded",
            (false, false) => "amended",
        }
    }
}

/// Correct a fact.
#[derive(Debug, Clone)]
pub struct Correct {
    /// The fact as recorded (looked up by its key).
    pub original: OriginalFact,
    /// `None`: void it; `Some(q)`: amend it to `q` (1 for a `unique_count` fact).
    pub quantity: Option<Decimal>,
    /// A `unique_count` fact's new value (with `quantity: Some(1)`).
    pub value: Option<String>,
    /// Why (1 to 500 characters).
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Now.
    pub at: DateTime<Utc>,
}

/// What happened to a fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum UsageCorrectionEvent {
    /// The fact no longer counts.
    UsageVoided {
        /// Whose.
        tenant_id: Uuid,
        /// The fact's key.
        idempotency_key: String,
        /// Its metric.
        metric: MetricName,
        /// Counter or gauge.
        kind: MetricKind,
        /// When it happened.
        occurred_at: DateTime<Utc>,
        /// Its quantity before.
        #[serde(with = "quantity")]
        previous_quantity: Decimal,
        /// Its value before (a `unique_count` fact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_value: Option<String>,
        /// Why.
        reason: String,
        /// Who.
        actor: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The fact counts with another quantity.
    UsageAmended {
        /// Whose.
        tenant_id: Uuid,
        /// The fact's key.
        idempotency_key: String,
        /// Its metric.
        metric: MetricName,
        /// Counter or gauge.
        kind: MetricKind,
        /// When it happened.
        occurred_at: DateTime<Utc>,
        /// Its quantity before.
        #[serde(with = "quantity")]
        previous_quantity: Decimal,
        /// Its quantity now.
        #[serde(with = "quantity")]
        quantity: Decimal,
        /// Its value before (a `unique_count` fact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_value: Option<String>,
        /// Its value now (a `unique_count` fact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Why.
        reason: String,
        /// Who.
        actor: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UsageCorrectionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::UsageVoided { .. } => "UsageVoided",
            Self::UsageAmended { .. } => "UsageAmended",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a correction was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorrectionError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The fact is void, or too old to correct.
    #[error("{message}")]
    Conflict {
        /// The field the conflict is about.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// No fact has this key.
    #[error("no usage fact has this idempotency key")]
    NotFound,
}

impl Rejection for CorrectionError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::Conflict { .. } => RejectionKind::Conflict,
            Self::NotFound => RejectionKind::NotFound,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::Conflict { .. } => "CONFLICT",
            Self::NotFound => "NOT_FOUND",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Invalid(e) => e.details(),
            Self::Conflict { field, .. } => {
                let mut details = serde_json::Map::new();
                details.insert("field".into(), (*field).into());
                details
            }
            Self::NotFound => serde_json::Map::new(),
        }
    }
}

impl Aggregate for UsageCorrections {
    const TYPE: &'static str = "UsageCorrection";
    type Command = Correct;
    type Event = UsageCorrectionEvent;
    type Error = CorrectionError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let Correct { original, quantity, value, reason, actor, at } = command;
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(ValidationError::new("reason", "must say why the fact is corrected (1 to 500 characters)").into());
        }
        let unique = original.fact.kind == MetricKind::Unique;
        let (quantity, value) = match (quantity, value) {
            (None, _) => (None, None),
            (Some(_), Some(v)) if unique => (Some(Decimal::ONE), Some(parse_value(&v)?)),
            (Some(_), None) if unique => {
                return Err(ValidationError::new("value", "the fact is of a unique_count metric: an amendment gives its new value").into());
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new("value", "only a unique_count metric's fact has a value; give its new quantity").into());
            }
            (Some(q), None) => (Some(parse_quantity(q)?), None),
        };
        if self.void {
            return Err(CorrectionError::Conflict {
                field: "idempotency_key",
                message: "the fact is void: it can be neither voided again nor amended".into(),
            });
        }
        let fact = &original.fact;
        if fact.occurred_at < at - chrono::Duration::days(LATE_USAGE_DAYS) {
            return Err(CorrectionError::Conflict {
                field: "occurred_at",
                message: format!("the fact occurred more than {LATE_USAGE_DAYS} days ago: it can no longer be corrected"),
            });
        }
        let (previous_quantity, previous_value) =
            if self.original.is_some() { (self.quantity, self.value.clone()) } else { (fact.quantity, fact.value.clone()) };
        let (tenant_id, idempotency_key, metric, kind, occurred_at) =
            (original.tenant_id, original.idempotency_key.clone(), fact.metric.clone(), fact.kind, fact.occurred_at);
        let event = match quantity {
            None => UsageCorrectionEvent::UsageVoided {
                tenant_id,
                idempotency_key,
                metric,
                kind,
                occurred_at,
                previous_quantity,
                previous_value,
                reason,
                actor,
                at,
            },
            Some(quantity) => UsageCorrectionEvent::UsageAmended {
                tenant_id,
                idempotency_key,
                metric,
                kind,
                occurred_at,
                previous_quantity,
                quantity,
                previous_value,
                value,
                reason,
                actor,
                at,
            },
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UsageCorrectionEvent::UsageVoided {
                tenant_id,
                idempotency_key,
                metric,
                kind,
                occurred_at,
                previous_quantity,
                previous_value,
                reason,
                actor,
                at,
            } => {
                self.original.get_or_insert(OriginalFact {
                    tenant_id,
                    idempotency_key,
                    fact: RecordedFact { metric, kind, quantity: previous_quantity, value: previous_value.clone(), occurred_at },
                });
                self.void = true;
                self.quantity = Decimal::ZERO;
                self.value = None;
                self.corrections.push(Correction {
                    kind: CorrectionKind::Void,
                    quantity: Decimal::ZERO,
                    previous_quantity,
                    value: None,
                    previous_value,
                    reason,
                    actor,
                    at,
                });
            }
            UsageCorrectionEvent::UsageAmended {
                tenant_id,
                idempotency_key,
                metric,
                kind,
                occurred_at,
                previous_quantity,
                quantity,
                previous_value,
                value,
                reason,
                actor,
                at,
            } => {
                self.original.get_or_insert(OriginalFact {
                    tenant_id,
                    idempotency_key,
                    fact: RecordedFact { metric, kind, quantity: previous_quantity, value: previous_value.clone(), occurred_at },
                });
                self.quantity = quantity;
                self.value = value.clone();
                self.corrections.push(Correction {
                    kind: CorrectionKind::Amend,
                    quantity,
                    previous_quantity,
                    value,
                    previous_value,
                    reason,
                    actor,
                    at,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn original(occurred_at: &str) -> OriginalFact {
        OriginalFact {
            tenant_id: Uuid::nil(),
            idempotency_key: "k1".into(),
            fact: RecordedFact {
                metric: MetricName::parse("api_calls").unwrap(),
                kind: MetricKind::Counter,
                quantity: Decimal::from(2001),
                value: None,
                occurred_at: at(occurred_at),
            },
        }
    }

    fn correct(quantity: Option<i64>, now: &str) -> Correct {
        Correct {
            original: original("2027-01-20T00:00:00Z"),
            quantity: quantity.map(Decimal::from),
            value: None,
            reason: "duplicate send".into(),
            actor: "admin".into(),
            at: at(now),
        }
    }

    type Facts = TestFramework<UsageCorrections>;

    #[test]
    fn a_fact_is_amended_then_voided_once_within_35_days() {
        let amended = UsageCorrectionEvent::UsageAmended {
            tenant_id: Uuid::nil(),
            idempotency_key: "k1".into(),
            metric: MetricName::parse("api_calls").unwrap(),
            kind: MetricKind::Counter,
            occurred_at: at("2027-01-20T00:00:00Z"),
            previous_quantity: Decimal::from(2001),
            quantity: Decimal::from(1500),
            previous_value: None,
            value: None,
            reason: "duplicate send".into(),
            actor: "admin".into(),
            at: at("2027-02-01T00:00:00Z"),
        };
        Facts::with(())
            .given_no_previous_events()
            .when(correct(Some(1500), "2027-02-01T00:00:00Z"))
            .then_expect_events(vec![amended.clone()]);
        // A void after it takes the amended quantity away.
        let events = Facts::with(()).given(vec![amended.clone()]).when(correct(None, "2027-02-02T00:00:00Z")).inspect_result().unwrap();
        assert!(
            matches!(&events[0], UsageCorrectionEvent::UsageVoided { previous_quantity, .. } if *previous_quantity == Decimal::from(1500))
        );
        let mut state = UsageCorrections::default();
        state.apply(amended);
        state.apply(events[0].clone());
        assert_eq!((state.status(), state.quantity, state.corrections.len()), ("void", Decimal::ZERO, 2));
        // Void: never again.
        let again = Facts::with(()).given(vec![events[0].clone()]).when(correct(None, "2027-02-02T00:00:00Z")).inspect_result();
        assert!(matches!(again, Err(CorrectionError::Conflict { field: "idempotency_key", .. })));
        let amend = Facts::with(()).given(vec![events[0].clone()]).when(correct(Some(3), "2027-02-02T00:00:00Z")).inspect_result();
        assert!(matches!(amend, Err(CorrectionError::Conflict { .. })));
    }

    #[test]
    fn an_old_fact_a_bad_quantity_or_no_reason_is_refused() {
        let late = Facts::with(()).given_no_previous_events().when(correct(None, "2027-02-25T00:00:01Z")).inspect_result();
        assert!(matches!(late, Err(CorrectionError::Conflict { field: "occurred_at", .. })), "{late:?}");
        let on_time = Facts::with(()).given_no_previous_events().when(correct(None, "2027-02-24T00:00:00Z")).inspect_result();
        assert!(on_time.is_ok(), "35 days to the second");
        let negative = Facts::with(()).given_no_previous_events().when(correct(Some(-1), "2027-02-01T00:00:00Z")).inspect_result();
        assert!(matches!(negative, Err(CorrectionError::Invalid(e)) if e.field == "quantity"));
        let mut silent = correct(None, "2027-02-01T00:00:00Z");
        silent.reason = " ".into();
        let silent = Facts::with(()).given_no_previous_events().when(silent).inspect_result();
        assert!(matches!(silent, Err(CorrectionError::Invalid(e)) if e.field == "reason"));
    }
}
