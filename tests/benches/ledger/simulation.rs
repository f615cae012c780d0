//! Phase 8: a price simulation over `BENCH_SIM_TENANTS` (default 10,000) tenants × 12 months.
//!
//! The history is made by the domain itself: each tenant's subscription is driven through the
//! real aggregate in memory (sign-up, a trial for one in four, monthly billing runs with their
//! invoices, usage facts with overage, upgrades, scheduled downgrades, cancellations, every
//! invoice paid), and its events and usage facts are appended in SQL in time order, numbered
//! as the server's writer numbers them, with the metadata the server writes (the command's
//! name included). The server projects them; then the simulation runs through the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::billing::period::Period;
use domain::plan::BillingPeriod;
use domain::subscription::{
    BillableUsage, BoxFuture, PaymentOutcome, PlanTerms, StartSubscription, Subscription, SubscriptionCommand as C, SubscriptionEvent,
    UsageMeter,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// One row for `events`.
struct Row {
    at: DateTime<Utc>,
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    payload: String,
    metadata: String,
}

/// The facts a seeded tenant has recorded: all of a period's facts are recorded well before the
/// billing run that closes it, so the meter simply counts the period's facts.
pub(super) struct Meter(pub(super) Vec<(&'static str, i64, DateTime<Utc>)>);

impl UsageMeter for Meter {
    fn billable_usage(&self, _tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        let sum = |metric: &str| {
            self.0.iter().filter(|(m, _, at)| *m == metric && *at >= period.start && *at < period.end).map(|f| f.1).sum::<i64>() as u64
        };
        let usage = BillableUsage { api_calls: sum("api_calls"), sms: sum("sms") };
        Box::pin(async move { Ok(usage) })
    }

    fn metered(
        &self,
        _tenant_id: Uuid,
        period: Period,
        metrics: Vec<String>,
    ) -> BoxFuture<'_, Result<BTreeMap<String, rust_decimal::Decimal>, String>> {
        let mut sums = BTreeMap::new();
        for (metric, quantity, at) in &self.0 {
            if metrics.iter().any(|m| m == metric) && *at >= period.start && *at < period.end {
                *sums.entry((*metric).to_owned()).or_insert(rust_decimal::Decimal::ZERO) += rust_decimal::Decimal::from(*quantity);
            }
        }
        Box::pin(async move { Ok(sums) })
    }
}

pub(super) fn metadata(tenant: Uuid, command: Option<&str>, at: DateTime<Utc>) -> String {
    let mut m = json!({"tenant_id": tenant, "actor": "system:bench", "correlation_id": "bench-sim", "causation_id": "bench-sim",
                       "occurred_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)});
    if let Some(command) = command {
        m["command"] = json!(command);
    }
    m.to_string()
}

/// Builds `tenants` tenants' histories of `months` months ending now; appends them. Returns
/// (events appended, invoices issued, the window's start).
pub async fn seed(pool: &PgPool, tenants: usize, months: u32) -> (usize, usize, DateTime<Utc>) {
    let plans: Vec<PlanTerms> = domain::plan::default_catalog().iter().take(3).map(PlanTerms::of).collect();
    let now = Utc::now();
    let origin = now - Duration::days(i64::from(months) * 31 + 30);
    let mut rows: Vec<Row> = Vec::new();
    let mut invoices = 0;
    for g in 0..tenants {
        let (tenant, subscription) = (Uuid::new_v4(), Uuid::new_v4());
        let start = origin + Duration::seconds((g as i64 * 7919) % (27 * 86_400));
        let mut facts = Vec::new();
        // The month's usage: three API-call facts (over the allowance for one tenant in three)
        // and some SMS, on days 2, 9 and 16 of each month.
        for m in 0..=months {
            let base = start.checked_add_months(Months::new(m)).expect("a month");
            for (i, day) in [2, 9, 16].into_iter().enumerate() {
                let calls = if g % 3 == 0 { 4_000 + (g as i64 * 13 + i as i64 * 101) % 2_000 } else { 500 + (g as i64 % 700) };
                facts.push(("api_calls", calls, base + Duration::days(day)));
            }
            facts.push(("sms", (g as i64 + i64::from(m)) % 12, base + Duration::days(20)));
        }
        facts.retain(|f| f.2 < now - Duration::hours(1) && f.1 > 0);
        let meter: <Subscription as Aggregate>::Services = std::sync::Arc::new(Meter(facts.clone()));
        let mut state = Subscription::default();
        let mut sequence = 0i64;
        let mut commands: Vec<(DateTime<Utc>, C)> = vec![(
            start,
            C::Start(Box::new(StartSubscription {
                subscription_id: subscription,
                tenant_id: tenant,
                tenant_code: format!("sim-{g}"),
                currency: "EUR".into(),
                tax_rate: domain::values::TaxRate::parse("8.1").expect("a rate"),
                plan: plans[g % plans.len()].clone(),
                billing_period: BillingPeriod::Monthly,
                trial_days: if g % 4 == 0 { 14 } else { 0 },
                net_terms_days: 0,
                at: start,
            })),
        )];
        for m in 1..=months + 1 {
            let month = start.checked_add_months(Months::new(m - 1)).expect("a month");
            if g % 10 == 3 && m == 4 {
                commands.push((
                    month + Duration::days(10),
                    C::ChangePlan {
                        plan: plans[(g + 1) % 3].clone(),
                        billing_period: None,
                        immediately: false,
                        at: month + Duration::days(10),
                    },
                ));
            }
            if g % 10 == 7 && m == 6 {
                let cheaper = plans[(g + 2) % 3].clone();
                commands.push((
                    month + Duration::days(5),
                    C::ChangePlan { plan: cheaper, billing_period: None, immediately: false, at: month + Duration::days(5) },
                ));
            }
            if g % 20 == 11 && m == 9 {
                commands.push((month + Duration::days(3), C::Cancel { at_period_end: true, at: month + Duration::days(3) }));
            }
            let as_of = start.checked_add_months(Months::new(m)).expect("a month") + Duration::minutes(5);
            if as_of < now {
                commands.push((as_of, C::AdvanceTo { as_of }));
            }
        }
        // A last run just now: nothing is due when the server starts billing by itself.
        commands.push((now - Duration::minutes(1), C::AdvanceTo { as_of: now - Duration::minutes(1) }));
        commands.sort_by_key(|(at, _)| *at);
        let mut queue: std::collections::VecDeque<(DateTime<Utc>, C)> = commands.into();
        while let Some((at, command)) = queue.pop_front() {
            let name = command.name();
            let sink = EventSink::default();
            if let Err(e) = state.handle(command, &meter, &sink).await {
                panic!("seeding sim-{g}: {name} at {at}: {e}");
            }
            let events = sink.collect().await;
            let meta = metadata(tenant, Some(name), at);
            for event in &events {
                if let SubscriptionEvent::InvoiceIssued { invoice_id, paid_at: None, .. } = event {
                    invoices += 1;
                    // Paid two hours later, before anything else happens to the subscription.
                    let paid = at + Duration::hours(2);
                    let amount = state.unpaid.get(invoice_id).copied().unwrap_or_default();
                    queue.push_front((
                        paid,
                        C::RecordPayment {
                            payment_id: format!("pay-{invoice_id}"),
                            invoice_id: *invoice_id,
                            outcome: PaymentOutcome::Succeeded { amount, currency: "EUR".into(), offline: None },
                            at: paid,
                        },
                    ));
                } else if matches!(event, SubscriptionEvent::InvoiceIssued { .. }) {
                    invoices += 1;
                }
                sequence += 1;
                rows.push(Row {
                    at,
                    aggregate_type: "Subscription",
                    aggregate_id: subscription.to_string(),
                    sequence,
                    event_type: event.event_type(),
                    payload: serde_json::to_string(event).expect("an event"),
                    metadata: meta.clone(),
                });
            }
        }
        for (i, (metric, quantity, occurred_at)) in facts.into_iter().enumerate() {
            let key = format!("f-{i}");
            let recorded_at = occurred_at + Duration::minutes(1);
            let payload = json!({"type": "UsageRecorded", "tenant_id": tenant, "metric": metric, "kind": "counter", "quantity": quantity,
                                 "idempotency_key": key, "occurred_at": occurred_at, "recorded_at": recorded_at});
            rows.push(Row {
                at: recorded_at,
                aggregate_type: "Usage",
                aggregate_id: domain::usage::usage_id(tenant, &key),
                sequence: 1,
                event_type: "UsageRecorded".into(),
                payload: payload.to_string(),
                metadata: metadata(tenant, None, recorded_at),
            });
        }
    }
    rows.sort_by_key(|r| r.at);
    let count = rows.len();
    for chunk in rows.chunks(20_000) {
        let mut tx = pool.begin().await.expect("a transaction");
        let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(&mut *tx).await.expect("the head");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
             SELECT ty, a, s, t, '1.0', p::jsonb, m::jsonb, $7 + n
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(ty, a, s, t, p, m, n)",
        )
        .bind(chunk.iter().map(|r| r.aggregate_type).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.aggregate_id.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.event_type.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.payload.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())
        .bind(head)
        .execute(&mut *tx)
        .await
        .expect("the seeded history");
        sqlx::query("UPDATE event_log_head SET position = $1").bind(head + chunk.len() as i64).execute(&mut *tx).await.expect("the head");
        tx.commit().await.expect("the seed commits");
    }
    (count, invoices, origin)
}
