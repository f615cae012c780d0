//! Given/when/then tests of every subscription transition and every refused one, with the
//! money asserted to the cent.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::rules::invoice_id;
use super::*;
use crate::billing::invoice::LineKind;
use crate::plan::default_catalog;

/// A meter that reports the same usage for every period.
struct FixedUsage(BillableUsage);

impl UsageMeter for FixedUsage {
    fn billable_usage(&self, _: Uuid, _: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        let usage = self.0;
        Box::pin(async move { Ok(usage) })
    }
}

fn no_usage() -> TestFramework<Subscription> {
    TestFramework::with(Arc::new(FixedUsage(BillableUsage::default())) as SubscriptionServices)
}

fn usage(api_calls: u64, sms: u64) -> TestFramework<Subscription> {
    TestFramework::with(Arc::new(FixedUsage(BillableUsage { api_calls, sms })) as SubscriptionServices)
}

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
}

fn terms(code: &str) -> PlanTerms {
    PlanTerms::of(default_catalog().iter().find(|p| p.code.as_str() == code).unwrap())
}

fn id() -> Uuid {
    Uuid::from_u128(7)
}

fn start(trial_days: u32, at: DateTime<Utc>) -> SubscriptionCommand {
    SubscriptionCommand::Start(Box::new(StartSubscription {
        subscription_id: id(),
        tenant_id: Uuid::from_u128(1),
        tenant_code: "acme".into(),
        currency: "EUR".into(),
        tax_rate: TaxRate::parse("10").unwrap(),
        plan: terms("starter"),
        billing_period: crate::plan::BillingPeriod::Monthly,
        trial_days,
        at,
    }))
}

/// The events of `when` on top of `given`.
fn run(
    framework: TestFramework<Subscription>,
    given: Vec<SubscriptionEvent>,
    command: SubscriptionCommand,
) -> Result<Vec<SubscriptionEvent>, SubscriptionError> {
    framework.given(given).when(command).inspect_result()
}

fn ok(framework: TestFramework<Subscription>, given: &[SubscriptionEvent], command: SubscriptionCommand) -> Vec<SubscriptionEvent> {
    run(framework, given.to_vec(), command).expect("the command is accepted")
}

fn history(framework: fn() -> TestFramework<Subscription>, commands: Vec<SubscriptionCommand>) -> Vec<SubscriptionEvent> {
    let mut events = Vec::new();
    for command in commands {
        let new = ok(framework(), &events, command);
        events.extend(new);
    }
    events
}

fn invoices(events: &[SubscriptionEvent]) -> Vec<&SubscriptionEvent> {
    events.iter().filter(|e| matches!(e, SubscriptionEvent::InvoiceIssued { .. })).collect()
}

/// (kind, amount) of each line, and (subtotal, tax, total), as strings.
fn money(invoice: &SubscriptionEvent) -> (Vec<(LineKind, String)>, [String; 3]) {
    let SubscriptionEvent::InvoiceIssued { lines, subtotal, tax, total, .. } = invoice else { panic!("not an invoice: {invoice:?}") };
    (lines.iter().map(|l| (l.kind, l.amount.to_string())).collect(), [subtotal.to_string(), tax.to_string(), total.to_string()])
}

fn cents(s: &str) -> String {
    s.to_owned()
}

#[test]
fn a_trial_starts_without_an_invoice_and_ends_with_the_first_one() {
    let started = ok(no_usage(), &[], start(14, at(2027, 1, 17)));
    assert_eq!(started.len(), 1);
    let SubscriptionEvent::SubscriptionStarted { trial_ends_at, anchor, .. } = &started[0] else { panic!() };
    assert_eq!(*trial_ends_at, Some(at(2027, 1, 31)));
    assert_eq!(*anchor, at(2027, 1, 31));

    assert!(ok(no_usage(), &started, SubscriptionCommand::AdvanceTo { as_of: at(2027, 1, 30) }).is_empty());
    let ended = ok(no_usage(), &started, SubscriptionCommand::AdvanceTo { as_of: at(2027, 1, 31) });
    assert!(matches!(ended[0], SubscriptionEvent::PeriodStarted { period_index: 0, period_end, .. } if period_end == at(2027, 2, 28)));
    let (lines, totals) = money(&ended[1]);
    assert_eq!(lines, [(LineKind::Plan, cents("29.00"))]);
    assert_eq!(totals, [cents("29.00"), cents("2.90"), cents("31.90")]);
    let SubscriptionEvent::InvoiceIssued { number, invoice_id: iid, .. } = &ended[1] else { panic!() };
    assert_eq!(number, "ACME-000001");
    assert_eq!(*iid, invoice_id(id(), 1));
}

#[test]
fn without_a_trial_the_first_period_is_invoiced_at_once() {
    let events = ok(no_usage(), &[], start(0, at(2027, 3, 5)));
    assert_eq!(events.len(), 3);
    assert_eq!(money(&events[2]).1, [cents("29.00"), cents("2.90"), cents("31.90")]);
}

#[test]
fn renewals_keep_the_anchor_day_and_bill_usage_in_arrears() {
    let events = history(no_usage, vec![start(0, at(2027, 1, 31))]);
    let renewed = ok(usage(12_001, 3), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 4, 30) });
    let ends: Vec<DateTime<Utc>> = renewed
        .iter()
        .filter_map(|e| match e {
            SubscriptionEvent::PeriodStarted { period_end, .. } => Some(*period_end),
            _ => None,
        })
        .collect();
    assert_eq!(ends, [at(2027, 3, 31), at(2027, 4, 30), at(2027, 5, 31)]);
    let (lines, totals) = money(invoices(&renewed)[0]);
    // 12,001 calls on 10,000 included → 3 started blocks × 0.50; 3 SMS × 0.05.
    assert_eq!(lines, [(LineKind::Plan, cents("29.00")), (LineKind::Overage, cents("1.50")), (LineKind::Overage, cents("0.15"))]);
    assert_eq!(totals, [cents("30.65"), cents("3.07"), cents("33.72")]);
    // Advancing to the same instant again changes nothing.
    let mut all = events.clone();
    all.extend(renewed);
    assert!(ok(usage(12_001, 3), &all, SubscriptionCommand::AdvanceTo { as_of: at(2027, 4, 30) }).is_empty());
}

#[test]
fn an_upgrade_half_way_is_prorated_by_the_second() {
    // Period Apr 1 – May 1 (30 days); Apr 16 is exactly half-way.
    let events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    let upgraded = ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("professional"), billing_period: None, immediately: false, at: at(2027, 4, 16) },
    );
    assert!(matches!(&upgraded[0], SubscriptionEvent::PlanChanged { plan, .. } if plan.code.as_str() == "professional"));
    let (lines, totals) = money(&upgraded[1]);
    assert_eq!(lines, [(LineKind::Proration, cents("-14.50")), (LineKind::Proration, cents("39.50"))]);
    assert_eq!(totals, [cents("25.00"), cents("2.50"), cents("27.50")]);
}

#[test]
fn a_downgrade_waits_for_the_period_end_and_is_billed_from_there() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    events.extend(ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("professional"), billing_period: None, immediately: false, at: at(2027, 4, 1) },
    ));
    let scheduled = ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("starter"), billing_period: None, immediately: false, at: at(2027, 4, 10) },
    );
    assert!(matches!(&scheduled[..], [SubscriptionEvent::PlanChangeScheduled { effective_at, .. }] if *effective_at == at(2027, 5, 1)));
    events.extend(scheduled);
    let renewed = ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 5, 1) });
    assert!(matches!(&renewed[0], SubscriptionEvent::PlanChanged { plan, .. } if plan.code.as_str() == "starter"));
    assert_eq!(money(invoices(&renewed)[0]).0, [(LineKind::Plan, cents("29.00"))]);
}

#[test]
fn an_immediate_downgrade_carries_the_difference_to_the_next_invoice() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    events.extend(ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("professional"), billing_period: None, immediately: false, at: at(2027, 4, 1) },
    ));
    let down = ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("starter"), billing_period: None, immediately: true, at: at(2027, 4, 16) },
    );
    let (lines, totals) = money(invoices(&down)[0]);
    assert_eq!(lines, [(LineKind::Proration, cents("-39.50")), (LineKind::Proration, cents("14.50")), (LineKind::Credit, cents("25.00"))]);
    assert_eq!(totals, [cents("0.00"), cents("0.00"), cents("0.00")]);
    events.extend(down);
    let renewed = ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 5, 1) });
    let (lines, totals) = money(invoices(&renewed)[0]);
    assert_eq!(lines, [(LineKind::Plan, cents("29.00")), (LineKind::Credit, cents("-25.00"))]);
    assert_eq!(totals, [cents("4.00"), cents("0.40"), cents("4.40")]);
}

#[test]
fn changing_plan_in_a_trial_is_free_and_changing_to_the_same_plan_is_refused() {
    let events = history(no_usage, vec![start(14, at(2027, 1, 1))]);
    let changed = ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan { plan: terms("business"), billing_period: None, immediately: false, at: at(2027, 1, 5) },
    );
    assert_eq!(changed.len(), 1);
    let same = run(
        no_usage(),
        events,
        SubscriptionCommand::ChangePlan { plan: terms("starter"), billing_period: None, immediately: false, at: at(2027, 1, 5) },
    );
    assert!(matches!(same, Err(SubscriptionError::NothingToChange(_))));
}

#[test]
fn switching_to_yearly_restarts_the_periods_and_credits_the_unused_month() {
    let events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    let switched = ok(
        no_usage(),
        &events,
        SubscriptionCommand::ChangePlan {
            plan: terms("starter"),
            billing_period: Some(crate::plan::BillingPeriod::Yearly),
            immediately: false,
            at: at(2027, 4, 16),
        },
    );
    assert!(
        matches!(&switched[1], SubscriptionEvent::PeriodStarted { period_index: 0, period_start, period_end } if *period_start == at(2027, 4, 16) && *period_end == at(2028, 4, 16))
    );
    let (lines, totals) = money(invoices(&switched)[0]);
    assert_eq!(lines, [(LineKind::Plan, cents("290.00")), (LineKind::Proration, cents("-14.50"))]);
    assert_eq!(totals[0], "275.50");
}

#[test]
fn cancel_at_period_end_can_be_withdrawn_and_otherwise_ends_the_subscription() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    let scheduled = ok(no_usage(), &events, SubscriptionCommand::Cancel { at_period_end: true, at: at(2027, 4, 10) });
    assert!(matches!(&scheduled[..], [SubscriptionEvent::CancellationScheduled { effective_at }] if *effective_at == at(2027, 5, 1)));
    events.extend(scheduled);
    assert!(matches!(
        run(no_usage(), events.clone(), SubscriptionCommand::Cancel { at_period_end: true, at: at(2027, 4, 11) }),
        Err(SubscriptionError::NothingToChange(_))
    ));
    let resumed = ok(no_usage(), &events, SubscriptionCommand::Resume { at: at(2027, 4, 12) });
    assert!(matches!(&resumed[..], [SubscriptionEvent::CancellationWithdrawn { .. }]));
    let ended = ok(usage(0, 2), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 6, 1) });
    // The last period's usage is invoiced, then it ends; nothing renews.
    assert_eq!(money(invoices(&ended)[0]).0, [(LineKind::Overage, cents("0.10"))]);
    assert!(
        matches!(ended.last(), Some(SubscriptionEvent::SubscriptionCancelled { immediately: false, cancelled_at }) if *cancelled_at == at(2027, 5, 1))
    );
    events.extend(ended);
    for command in [
        SubscriptionCommand::Cancel { at_period_end: false, at: at(2027, 6, 2) },
        SubscriptionCommand::Resume { at: at(2027, 6, 2) },
        SubscriptionCommand::ChangePlan { plan: terms("business"), billing_period: None, immediately: false, at: at(2027, 6, 2) },
        SubscriptionCommand::SetAddons { addons: Addons { extra_users: 1, extra_storage_gb: 0 }, at: at(2027, 6, 2) },
    ] {
        assert!(matches!(
            run(no_usage(), events.clone(), command),
            Err(SubscriptionError::InvalidTransition { status: SubscriptionStatus::Cancelled, .. })
        ));
    }
    assert!(ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2028, 1, 1) }).is_empty());
}

#[test]
fn resume_without_a_pending_cancellation_is_refused() {
    let events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    assert!(matches!(
        run(no_usage(), events, SubscriptionCommand::Resume { at: at(2027, 4, 2) }),
        Err(SubscriptionError::InvalidTransition { .. })
    ));
}

#[test]
fn cancelling_immediately_bills_the_usage_so_far() {
    let events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    let cancelled = ok(usage(0, 4), &events, SubscriptionCommand::Cancel { at_period_end: false, at: at(2027, 4, 20) });
    assert_eq!(money(&cancelled[0]).0, [(LineKind::Overage, cents("0.20"))]);
    assert!(matches!(cancelled[1], SubscriptionEvent::SubscriptionCancelled { immediately: true, .. }));
}

#[test]
fn addons_are_billed_in_advance_from_the_next_period() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    events.extend(ok(
        no_usage(),
        &events,
        SubscriptionCommand::SetAddons { addons: Addons { extra_users: 2, extra_storage_gb: 5 }, at: at(2027, 4, 3) },
    ));
    assert!(ok(
        no_usage(),
        &events,
        SubscriptionCommand::SetAddons { addons: Addons { extra_users: 2, extra_storage_gb: 5 }, at: at(2027, 4, 4) }
    )
    .is_empty());
    let renewed = ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 5, 1) });
    let (lines, totals) = money(invoices(&renewed)[0]);
    assert_eq!(lines, [(LineKind::Plan, cents("29.00")), (LineKind::Addon, cents("10.00")), (LineKind::Addon, cents("0.50"))]);
    assert_eq!(totals[0], "39.50");
}

#[test]
fn a_failed_payment_leads_to_past_due_then_suspension_and_payment_reactivates() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    let first = invoice_id(id(), 1);
    let failed = ok(
        no_usage(),
        &events,
        SubscriptionCommand::RecordPayment {
            payment_id: "evt_1".into(),
            invoice_id: first,
            outcome: PaymentOutcome::Failed,
            at: at(2027, 4, 2),
        },
    );
    assert!(matches!(&failed[..], [SubscriptionEvent::PaymentFailed { .. }]));
    events.extend(failed);
    assert!(ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 4, 8) }).is_empty());
    let suspended = ok(no_usage(), &events, SubscriptionCommand::AdvanceTo { as_of: at(2027, 4, 9) });
    assert!(matches!(&suspended[..], [SubscriptionEvent::SubscriptionSuspended { suspended_at }] if *suspended_at == at(2027, 4, 9)));
    events.extend(suspended);
    // Duplicate notification: nothing. Wrong amount: refused. Unknown invoice: not found.
    assert!(ok(
        no_usage(),
        &events,
        SubscriptionCommand::RecordPayment {
            payment_id: "evt_1".into(),
            invoice_id: first,
            outcome: PaymentOutcome::Failed,
            at: at(2027, 4, 10)
        }
    )
    .is_empty());
    let wrong = SubscriptionCommand::RecordPayment {
        payment_id: "evt_2".into(),
        invoice_id: first,
        outcome: PaymentOutcome::Succeeded { amount: Decimal::new(2900, 2), currency: "EUR".into() },
        at: at(2027, 4, 10),
    };
    assert!(matches!(run(no_usage(), events.clone(), wrong), Err(SubscriptionError::PaymentMismatch { .. })));
    let unknown = SubscriptionCommand::RecordPayment {
        payment_id: "evt_3".into(),
        invoice_id: Uuid::from_u128(99),
        outcome: PaymentOutcome::Failed,
        at: at(2027, 4, 10),
    };
    assert!(matches!(run(no_usage(), events.clone(), unknown), Err(SubscriptionError::InvoiceNotFound)));
    let paid = ok(
        no_usage(),
        &events,
        SubscriptionCommand::RecordPayment {
            payment_id: "evt_4".into(),
            invoice_id: first,
            outcome: PaymentOutcome::Succeeded { amount: Decimal::new(3190, 2), currency: "EUR".into() },
            at: at(2027, 4, 11),
        },
    );
    assert!(matches!(&paid[..], [SubscriptionEvent::PaymentSucceeded { .. }, SubscriptionEvent::SubscriptionReactivated { .. }]));
    events.extend(paid);
    // Paying an already paid invoice again changes nothing.
    assert!(ok(
        no_usage(),
        &events,
        SubscriptionCommand::RecordPayment {
            payment_id: "evt_5".into(),
            invoice_id: first,
            outcome: PaymentOutcome::Failed,
            at: at(2027, 4, 12)
        }
    )
    .is_empty());
    // Renewals continue while suspended (the invoices accumulate).
    let _ = Duration::days(GRACE_DAYS);
}

#[test]
fn commands_before_start_are_not_found_and_start_happens_once() {
    assert!(matches!(run(no_usage(), vec![], SubscriptionCommand::AdvanceTo { as_of: at(2027, 1, 1) }), Err(SubscriptionError::NotFound)));
    let events = history(no_usage, vec![start(0, at(2027, 1, 1))]);
    assert!(matches!(run(no_usage(), events, start(0, at(2027, 1, 2))), Err(SubscriptionError::AlreadyExists)));
    assert!(matches!(run(no_usage(), vec![], start(31, at(2027, 1, 2))), Err(SubscriptionError::Invalid(_))));
}

#[test]
fn changing_plan_while_suspended_is_refused() {
    let mut events = history(no_usage, vec![start(0, at(2027, 4, 1))]);
    events.push(SubscriptionEvent::PaymentFailed { payment_id: "p".into(), invoice_id: invoice_id(id(), 1), failed_at: at(2027, 4, 2) });
    events.push(SubscriptionEvent::SubscriptionSuspended { suspended_at: at(2027, 4, 9) });
    let refused = run(
        no_usage(),
        events,
        SubscriptionCommand::ChangePlan { plan: terms("business"), billing_period: None, immediately: false, at: at(2027, 4, 10) },
    );
    assert!(matches!(refused, Err(SubscriptionError::InvalidTransition { status: SubscriptionStatus::Suspended, .. })));
}
