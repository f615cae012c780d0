//! Billable metrics: how a metric's facts of a period combine into the one figure a plan prices
//! and a quota counts (Lago's billable metrics; Stripe's meters): `sum`, `max`, `last` or
//! `unique_count` (the distinct values of the period, exact: this is billing), rounded once,
//! after aggregation, to the metric's `precision` by its `rounding`.
//!
//! The catalog is one stream per metric code (`Metric`/`<code>`), defined once: a definition
//! never changes, so periods billed under it stay billed under it. The built-ins (`api_calls`,
//! `sms`, `tickets`: `sum`; `storage_bytes`: `last`; all precision 0) are its first entries and
//! need no event. A metric a plan's charge names without a definition (plans made before the
//! catalog) is a `sum` of precision 0, as it always was.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::{MetricKind, MetricName, MAX_SCALE};
use crate::{Rejection, RejectionKind, ValidationError};

/// How a period's facts combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Aggregation))]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The quantities added up.
    Sum,
    /// The largest quantity.
    Max,
    /// The quantity of the latest fact (by `occurred_at`, then the order recorded).
    Last,
    /// How many distinct `value`s.
    UniqueCount,
}

impl Aggregation {
    /// The kind the usage records and hourly buckets keep for a fact of this metric.
    pub fn kind(self) -> MetricKind {
        match self {
            Self::Sum => MetricKind::Counter,
            Self::Max => MetricKind::Max,
            Self::Last => MetricKind::Gauge,
            Self::UniqueCount => MetricKind::Unique,
        }
    }

    /// Its name in the API (`unique_count`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Max => "max",
            Self::Last => "last",
            Self::UniqueCount => "unique_count",
        }
    }

    /// Parses `sum`, `max`, `last` or `unique_count`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Ok(match text {
            "sum" => Self::Sum,
            "max" => Self::Max,
            "last" => Self::Last,
            "unique_count" => Self::UniqueCount,
            _ => return Err(ValidationError::new("aggregation", "must be sum, max, last or unique_count")),
        })
    }
}

/// How an aggregate is rounded to the metric's precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::MetricRounding))]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// To the nearest, halves away from zero.
    #[default]
    HalfUp,
    /// Away from zero (5.1 → 6).
    Up,
    /// Toward zero (5.9 → 5).
    Down,
}

impl Rounding {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HalfUp => "half_up",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// Parses `half_up`, `up` or `down`.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Ok(match text {
            "half_up" => Self::HalfUp,
            "up" => Self::Up,
            "down" => Self::Down,
            _ => return Err(ValidationError::new("rounding", "must be half_up, up or down")),
        })
    }
}

/// A billable metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::MetricDefinition))]
pub struct MetricDefinition {
    /// Its code, as facts and plan charges name it.
    pub code: MetricName,
    /// A name for people (1 to 100 characters).
    pub name: String,
    /// How a period's facts combine.
    pub aggregation: Aggregation,
    /// The unit, for people (`GB-hours`; at most 32 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Decimal places kept after aggregation (0 to 6).
    pub precision: u32,
    /// How the aggregate is rounded to them.
    #[serde(default)]
    pub rounding: Rounding,
}

/// Where a fact stands among a period's: `occurred_at`, then its log position and place in its
/// batch.
pub type FactOrder = (DateTime<Utc>, i64, i32);

/// The parts of a period's facts every aggregation is computed from (a fact at a time, or from
/// one SQL statement's `sum`, `max`, latest and `count(DISTINCT value)`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// The quantities added up.
    pub sum: Decimal,
    /// The largest quantity.
    pub max: Option<Decimal>,
    /// The latest fact's quantity, with its order key (`occurred_at`, position, item).
    pub last: Option<(FactOrder, Decimal)>,
    /// The distinct values.
    pub values: std::collections::BTreeSet<String>,
}

impl Tally {
    /// Counts one fact in.
    pub fn add(&mut self, occurred_at: DateTime<Utc>, position: i64, item: i32, quantity: Decimal, value: Option<&str>) {
        self.sum += quantity;
        self.max = Some(self.max.map_or(quantity, |m| m.max(quantity)));
        let key = (occurred_at, position, item);
        if self.last.as_ref().is_none_or(|(k, _)| key >= *k) {
            self.last = Some((key, quantity));
        }
        if let Some(value) = value {
            if !self.values.contains(value) {
                self.values.insert(value.to_owned());
            }
        }
    }
}

impl MetricDefinition {
    /// The definition of a built-in metric, or of one a plan names without a catalog entry
    /// (summed, precision 0).
    pub fn implicit(code: &str) -> Self {
        let aggregation = if code == "storage_bytes" { Aggregation::Last } else { Aggregation::Sum };
        let name = match code {
            "api_calls" => "API calls",
            "sms" => "SMS",
            "tickets" => "Tickets",
            "storage_bytes" => "Storage",
            other => other,
        };
        let unit = match code {
            "api_calls" => Some("calls"),
            "sms" => Some("messages"),
            "tickets" => Some("tickets"),
            "storage_bytes" => Some("bytes"),
            _ => None,
        };
        Self {
            code: MetricName(code.to_owned()),
            name: name.to_owned(),
            aggregation,
            unit: unit.map(str::to_owned),
            precision: 0,
            rounding: Rounding::HalfUp,
        }
    }

    /// The built-in metrics, as the catalog lists them.
    pub fn built_ins() -> Vec<Self> {
        super::BUILT_IN_METRICS.iter().map(|m| Self::implicit(m)).collect()
    }

    /// Checks a new definition: name and unit lengths, precision 0 to 6, not a built-in code.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ValidationError::new("name", "must be 1 to 100 characters"));
        }
        if let Some(unit) = &self.unit {
            if unit.trim().is_empty() || unit.chars().count() > 32 {
                return Err(ValidationError::new("unit", "must be 1 to 32 characters"));
            }
        }
        if self.precision > MAX_SCALE {
            return Err(ValidationError::new("precision", format!("must be from 0 to {MAX_SCALE}")));
        }
        Ok(())
    }

    /// `raw` rounded to the precision by the rounding rule (without trailing zeros).
    pub fn round(&self, raw: Decimal) -> Decimal {
        let strategy = match self.rounding {
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Rounding::Up => RoundingStrategy::AwayFromZero,
            Rounding::Down => RoundingStrategy::ToZero,
        };
        raw.round_dp_with_strategy(self.precision, strategy).normalize()
    }

    /// The period's figure from its tally: aggregated, then rounded once.
    pub fn figure(&self, tally: &Tally) -> Decimal {
        let raw = match self.aggregation {
            Aggregation::Sum => tally.sum,
            Aggregation::Max => tally.max.unwrap_or_default(),
            Aggregation::Last => tally.last.as_ref().map(|(_, q)| *q).unwrap_or_default(),
            Aggregation::UniqueCount => Decimal::from(tally.values.len()),
        };
        self.round(raw)
    }

    /// The figure from SQL's parts: the sum, the largest, the latest and the distinct count.
    pub fn figure_of(&self, sum: Decimal, max: Option<Decimal>, last: Option<Decimal>, distinct: i64) -> Decimal {
        let raw = match self.aggregation {
            Aggregation::Sum => sum,
            Aggregation::Max => max.unwrap_or_default(),
            Aggregation::Last => last.unwrap_or_default(),
            Aggregation::UniqueCount => Decimal::from(distinct),
        };
        self.round(raw)
    }
}

/// A metric's catalog entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BillableMetric {
    /// The definition, once defined.
    pub definition: Option<MetricDefinition>,
    /// When.
    pub defined_at: Option<DateTime<Utc>>,
}

/// Define a metric.
#[derive(Debug, Clone)]
pub struct DefineMetric {
    /// The definition.
    pub definition: MetricDefinition,
    /// Now.
    pub at: DateTime<Utc>,
}

/// Metric catalog events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MetricEvent {
    /// A metric joined the catalog.
    MetricDefined {
        /// Its definition.
        metric: MetricDefinition,
        /// When.
        defined_at: DateTime<Utc>,
    },
}

impl DomainEvent for MetricEvent {
    fn event_type(&self) -> String {
        "MetricDefined".to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The code is taken (by a built-in or an earlier definition).
    #[error("the metric \"{0}\" is already defined (a definition never changes: periods billed under it stay billed under it)")]
    Taken(String),
}

impl Rejection for MetricError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::Taken(_) => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::Taken(_) => "CONFLICT",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Invalid(e) => e.details(),
            Self::Taken(_) => {
                let mut details = serde_json::Map::new();
                details.insert("field".into(), "code".into());
                details
            }
        }
    }
}

impl Aggregate for BillableMetric {
    const TYPE: &'static str = "Metric";
    type Command = DefineMetric;
    type Event = MetricEvent;
    type Error = MetricError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let DefineMetric { mut definition, at } = command;
        if self.definition.is_some() || super::BUILT_IN_METRICS.contains(&definition.code.as_str()) {
            return Err(MetricError::Taken(definition.code.to_string()));
        }
        definition.validate()?;
        definition.name = definition.name.trim().to_owned();
        definition.unit = definition.unit.map(|u| u.trim().to_owned());
        sink.write(MetricEvent::MetricDefined { metric: definition, defined_at: at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let MetricEvent::MetricDefined { metric, defined_at } = event;
        self.definition = Some(metric);
        self.defined_at = Some(defined_at);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn metric(aggregation: Aggregation, precision: u32, rounding: Rounding) -> MetricDefinition {
        MetricDefinition {
            code: MetricName::parse("gb_hours").unwrap(),
            name: "GB-hours".into(),
            aggregation,
            unit: Some("GB-h".into()),
            precision,
            rounding,
        }
    }

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    #[test]
    fn the_contracts_example_rounds_once_after_aggregation() {
        // 5.1 + 5.1 on a precision-0 metric rounding up → 11 (not 6 + 6 = 12).
        let up = metric(Aggregation::Sum, 0, Rounding::Up);
        let mut tally = Tally::default();
        let at = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        tally.add(at, 1, 1, d("5.1"), None);
        tally.add(at, 2, 1, d("5.1"), None);
        assert_eq!(up.figure(&tally).to_string(), "11");
        assert_eq!(metric(Aggregation::Sum, 0, Rounding::Down).figure(&tally).to_string(), "10");
        assert_eq!(metric(Aggregation::Sum, 0, Rounding::HalfUp).figure(&tally).to_string(), "10");
        assert_eq!(metric(Aggregation::Sum, 1, Rounding::Up).figure(&tally).to_string(), "10.2");
        assert_eq!(metric(Aggregation::Sum, 0, Rounding::HalfUp).round(d("10.5")).to_string(), "11");
        assert_eq!(metric(Aggregation::Sum, 2, Rounding::HalfUp).round(d("0.125")).to_string(), "0.13");
        assert_eq!(metric(Aggregation::Sum, 2, Rounding::Down).round(d("0.129")).to_string(), "0.12");
    }

    #[test]
    fn max_last_and_unique_count_over_a_period() {
        let at = |h| Utc.with_ymd_and_hms(2027, 1, 1, h, 0, 0).unwrap();
        let mut tally = Tally::default();
        tally.add(at(3), 1, 1, d("7"), Some("u1"));
        tally.add(at(1), 2, 1, d("9.5"), Some("u2"));
        tally.add(at(2), 3, 1, d("4"), Some("u1"));
        assert_eq!(metric(Aggregation::Max, 1, Rounding::HalfUp).figure(&tally), d("9.5"));
        assert_eq!(
            metric(Aggregation::Last, 0, Rounding::HalfUp).figure(&tally),
            d("7"),
            "the latest occurred_at, not the latest recorded"
        );
        assert_eq!(metric(Aggregation::UniqueCount, 0, Rounding::HalfUp).figure(&tally), d("2"), "u1 twice counts once");
        assert_eq!(metric(Aggregation::Sum, 6, Rounding::HalfUp).figure(&tally), d("20.5"));
        assert_eq!(metric(Aggregation::Max, 0, Rounding::HalfUp).figure(&Tally::default()), Decimal::ZERO);
        let sql = metric(Aggregation::UniqueCount, 0, Rounding::HalfUp).figure_of(d("3"), Some(d("9.5")), Some(d("7")), 2);
        assert_eq!(sql, d("2"));
    }

    #[test]
    fn a_metric_is_defined_once_and_never_over_a_built_in() {
        let at = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let define = |m: MetricDefinition| DefineMetric { definition: m, at };
        let events = TestFramework::<BillableMetric>::with(())
            .given_no_previous_events()
            .when(define(metric(Aggregation::Sum, 3, Rounding::Up)))
            .inspect_result()
            .unwrap();
        assert_eq!(events.len(), 1);
        let again = TestFramework::<BillableMetric>::with(())
            .given(events)
            .when(define(metric(Aggregation::Max, 0, Rounding::Up)))
            .inspect_result();
        assert!(matches!(again, Err(MetricError::Taken(_))));
        let built_in = MetricDefinition { code: MetricName::parse("api_calls").unwrap(), ..metric(Aggregation::Sum, 0, Rounding::Up) };
        let refused =
            TestFramework::<BillableMetric>::with(()).given_no_previous_events().when(define(built_in)).inspect_result().unwrap_err();
        assert_eq!((refused.code(), refused.details()["field"].as_str()), ("CONFLICT", Some("code")));
        for (bad, field) in [
            (MetricDefinition { precision: 7, ..metric(Aggregation::Sum, 0, Rounding::Up) }, "precision"),
            (MetricDefinition { name: " ".into(), ..metric(Aggregation::Sum, 0, Rounding::Up) }, "name"),
            (MetricDefinition { unit: Some("x".repeat(33)), ..metric(Aggregation::Sum, 0, Rounding::Up) }, "unit"),
        ] {
            let refused =
                TestFramework::<BillableMetric>::with(()).given_no_previous_events().when(define(bad)).inspect_result().unwrap_err();
            assert_eq!(refused.details()["field"].as_str(), Some(field));
        }
    }

    #[test]
    fn the_built_ins_are_the_catalogs_first_entries() {
        let built_ins = MetricDefinition::built_ins();
        let codes: Vec<_> = built_ins.iter().map(|m| (m.code.as_str(), m.aggregation, m.precision)).collect();
        assert_eq!(
            codes,
            [
                ("api_calls", Aggregation::Sum, 0),
                ("sms", Aggregation::Sum, 0),
                ("storage_bytes", Aggregation::Last, 0),
                ("tickets", Aggregation::Sum, 0)
            ]
        );
    }
}
