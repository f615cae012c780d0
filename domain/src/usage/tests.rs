//! The usage fact's and batch's rules: one fact once, a key's reuse refused, decimals, unique
//! values, the 35-day window and batch sizes.

use chrono::TimeZone;
use cqrs_es::test::TestFramework;

use super::*;

fn record(quantity: i64, occurred_at: DateTime<Utc>) -> RecordUsage {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap();
    RecordUsage {
        tenant_id: Uuid::from_u128(1),
        metric: MetricName::parse("api_calls").unwrap(),
        kind: MetricKind::Counter,
        quantity: Decimal::from(quantity),
        value: None,
        idempotency_key: "k1".into(),
        occurred_at,
        occurred_at_stated: true,
        at,
    }
}

#[test]
fn a_fact_is_recorded_once_and_a_retry_records_nothing() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 11, 0, 0).unwrap();
    let events = TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(5, at)).inspect_result().unwrap();
    assert!(
        matches!(&events[..], [UsageEvent::UsageRecorded { quantity, kind: MetricKind::Counter, .. }] if *quantity == Decimal::from(5))
    );
    TestFramework::<UsageFact>::with(()).given(events).when(record(5, at)).then_expect_events(vec![]);
}

#[test]
fn a_key_sent_again_with_another_fact_is_refused_and_one_without_its_instant_is_a_resend() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 11, 0, 0).unwrap();
    let recorded = TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(5, at)).inspect_result().unwrap();
    let reused = |command: RecordUsage| TestFramework::<UsageFact>::with(()).given(recorded.clone()).when(command).inspect_result();
    for other in [
        record(6, at),
        record(5, at + chrono::Duration::seconds(1)),
        RecordUsage { metric: MetricName::parse("sms").unwrap(), ..record(5, at) },
    ] {
        let refused = reused(other).unwrap_err();
        assert_eq!((refused.kind(), refused.code()), (RejectionKind::Conflict, "IDEMPOTENCY_KEY_REUSED"), "{refused}");
        assert_eq!(refused.details()["recorded"]["quantity"], 5);
    }
    // Without `occurred_at` the server dates a fact when it arrives: a resend of the same
    // metric and quantity is the same fact, whenever it comes.
    let unstated = RecordUsage { occurred_at_stated: false, ..record(5, at + chrono::Duration::minutes(3)) };
    assert_eq!(reused(unstated).unwrap(), vec![]);
}

#[test]
fn negative_huge_and_future_facts_are_refused() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 11, 0, 0).unwrap();
    for quantity in [-1, MAX_QUANTITY + 1] {
        assert!(TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(quantity, at)).inspect_result().is_err());
    }
    let future = Utc.with_ymd_and_hms(2027, 1, 1, 12, 10, 0).unwrap();
    assert!(TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(1, future)).inspect_result().is_err());
}

#[test]
fn facts_up_to_35_days_old_are_recorded_and_older_ones_refused_naming_occurred_at() {
    let now = Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap();
    let oldest = now - chrono::Duration::days(LATE_USAGE_DAYS);
    assert!(TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(1, oldest)).inspect_result().is_ok());
    let older = oldest - chrono::Duration::seconds(1);
    let Err(UsageError::Invalid(refused)) =
        TestFramework::<UsageFact>::with(()).given_no_previous_events().when(record(1, older)).inspect_result()
    else {
        panic!("a fact older than the window is refused")
    };
    assert_eq!(refused.field, "occurred_at");
    assert!(refused.message.contains("35 days"), "{}", refused.message);
}

#[test]
fn only_known_metrics_may_be_recorded() {
    for known in BUILT_IN_METRICS {
        assert!(MetricName::known(known, &[]).is_ok(), "{known}");
    }
    assert!(MetricName::known("exports", &["exports".to_owned()]).is_ok(), "a metric the plan prices");
    let refused = MetricName::known("emails", &["exports".to_owned()]).unwrap_err();
    assert_eq!(refused.field, "metric");
    assert!(refused.message.contains("\"emails\"") && refused.message.contains("\"api_calls\""), "{}", refused.message);
    // A plan that prices a built-in metric lists it once.
    let refused = MetricName::known("emails", &["api_calls".to_owned(), "exports".to_owned()]).unwrap_err();
    assert_eq!(refused.message.matches("\"api_calls\"").count(), 1, "{}", refused.message);
    assert!(refused.message.ends_with("\"tickets\", \"exports\""), "{}", refused.message);
}

#[test]
fn decimal_quantities_and_unique_values() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 11, 0, 0).unwrap();
    let decimal = RecordUsage { quantity: "2.125".parse().unwrap(), ..record(0, at) };
    assert_eq!(decimal.decide().unwrap().quantity.to_string(), "2.125");
    let field = |r: RecordUsage| match r.decide() {
        Err(UsageError::Invalid(e)) => e.field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(RecordUsage { quantity: "0.0000001".parse().unwrap(), ..record(0, at) }), "quantity");
    let unique = RecordUsage { kind: MetricKind::Unique, value: Some("user-1".into()), ..record(0, at) };
    let decided = unique.decide().unwrap();
    assert_eq!((decided.quantity, decided.value.as_deref()), (Decimal::ONE, Some("user-1")));
    assert_eq!(field(RecordUsage { value: None, ..unique.clone() }), "value");
    assert_eq!(field(RecordUsage { value: Some(String::new()), ..unique.clone() }), "value");
    assert_eq!(field(RecordUsage { value: Some("x".into()), ..record(1, at) }), "value");
    // A unique fact sent again with another value is another fact.
    let recorded = RecordedFact {
        metric: unique.metric.clone(),
        kind: MetricKind::Unique,
        quantity: Decimal::ONE,
        value: Some("user-1".into()),
        occurred_at: at,
    };
    assert!(unique.repeats(&recorded));
    assert!(!RecordUsage { value: Some("user-2".into()), ..unique }.repeats(&recorded));
}

#[test]
fn metric_names() {
    for bad in ["", "API", "1abc", "a-b", &"a".repeat(65)] {
        assert!(MetricName::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_batch_is_one_event_once_and_refuses_repeated_keys_and_bad_sizes() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap();
    let fact = |key: &str, quantity| {
        RecordUsage { idempotency_key: key.to_owned(), ..record(quantity, at - chrono::Duration::hours(1)) }.decide().unwrap()
    };
    let batch = |facts| RecordUsageBatch { tenant_id: Uuid::from_u128(1), facts, at };
    let events = TestFramework::<UsageBatch>::with(())
        .given_no_previous_events()
        .when(batch(vec![fact("a", 1), fact("b", 2)]))
        .inspect_result()
        .unwrap();
    let [UsageBatchEvent::UsageBatchRecorded { facts, recorded_at, .. }] = &events[..] else { panic!("{events:?}") };
    assert_eq!((facts.len(), facts[1].quantity, *recorded_at), (2, Decimal::from(2), at));
    TestFramework::<UsageBatch>::with(()).given(events).when(batch(vec![fact("c", 1)])).then_expect_events(vec![]);
    for facts in [vec![fact("a", 1), fact("a", 2)], vec![], (0..=MAX_BATCH_FACTS).map(|i| fact(&i.to_string(), 1)).collect()] {
        assert!(TestFramework::<UsageBatch>::with(()).given_no_previous_events().when(batch(facts)).inspect_result().is_err());
    }
}

#[test]
fn a_fact_in_a_batch_is_held_to_the_rules_of_a_fact_on_its_own() {
    let at = Utc.with_ymd_and_hms(2027, 1, 1, 12, 0, 0).unwrap();
    let field = |r: RecordUsage| match r.decide() {
        Err(UsageError::Invalid(e)) => e.field,
        Err(other) => panic!("deciding a fact alone never compares it with another: {other}"),
        Ok(_) => "accepted".to_owned(),
    };
    assert_eq!(field(record(-1, at)), "quantity");
    assert_eq!(field(record(1, at + chrono::Duration::minutes(10))), "occurred_at");
    assert_eq!(field(record(1, at - chrono::Duration::days(LATE_USAGE_DAYS + 1))), "occurred_at");
    assert_eq!(field(record(1, at - chrono::Duration::days(LATE_USAGE_DAYS - 1))), "accepted");
}
