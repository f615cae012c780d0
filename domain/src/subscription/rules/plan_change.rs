//! Changing plan: an upgrade takes effect at once with a prorated invoice (see
//! `billing::proration`); a downgrade waits for the period's end unless asked otherwise, its unused
//! time carried as credit.

use super::*;

pub(super) async fn change_plan(
    s: &mut Subscription,
    plan: crate::subscription::PlanTerms,
    billing_period: Option<crate::plan::BillingPeriod>,
    immediately: bool,
    at: DateTime<Utc>,
    meter: &dyn UsageMeter,
    sink: &Sink,
) -> Outcome {
    if matches!(s.status, S::Cancelled | S::Suspended) {
        return Err(SubscriptionError::InvalidTransition { action: "change the plan of", status: s.status });
    }
    let current = s.plan.clone().expect("started");
    let current_period = s.billing_period.expect("started");
    let new_period = billing_period.unwrap_or(current_period);
    if current == plan && new_period == current_period {
        if s.pending_change.is_some() {
            sink.write(E::ScheduledPlanChangeDropped { at }, s).await;
            return Ok(());
        }
        return Err(SubscriptionError::NothingToChange("the subscription is already on this plan"));
    }
    if s.status == S::Trialing {
        sink.write(E::PlanChanged { plan, billing_period: new_period, new_anchor: None, effective_at: at }, s).await;
        return Ok(());
    }
    let period = s.current_period().expect("started");
    if new_period != current_period {
        // A new interval restarts the periods now: the unused old period is credited and the
        // first new period is charged in full.
        // The old period's usage so far is billed now, in arrears, as a cancellation would.
        let credit = proration::split(current.price(current_period), Decimal::ZERO, period, at).credit;
        let used = Period { start: period.start, end: at.max(period.start) };
        let mut lines = bill_usage(s, meter, used, at, sink).await?;
        sink.write(E::PlanChanged { plan, billing_period: new_period, new_anchor: Some(at), effective_at: at }, s).await;
        let unused = InvoiceLine::fixed(
            LineKind::Proration,
            format!("Unused time on {} ({}) from {}", current.name, current_period.as_str(), at.format("%Y-%m-%d")),
            -credit,
        )
        .over(Period { start: at.max(period.start), end: period.end });
        lines.insert(0, unused);
        begin_period(s, 0, lines, at, sink).await;
        return Ok(());
    }
    let (old_price, new_price) = (current.price(current_period), plan.price(current_period));
    if new_price < old_price && !immediately {
        sink.write(E::PlanChangeScheduled { plan, billing_period: new_period, effective_at: period.end }, s).await;
        return Ok(());
    }
    let split = proration::split(old_price, new_price, period, at);
    let new_name = plan.name.clone();
    sink.write(E::PlanChanged { plan, billing_period: new_period, new_anchor: None, effective_at: at }, s).await;
    if new_price != old_price {
        let from = at.format("%Y-%m-%d %H:%M UTC");
        let rest = Period { start: at.max(period.start), end: period.end };
        let mut lines = vec![
            InvoiceLine::fixed(LineKind::Proration, format!("Unused time on {} from {from}", current.name), -split.credit).over(rest),
            InvoiceLine::fixed(LineKind::Proration, format!("Remaining time on {new_name} from {from}"), split.charge).over(rest),
        ];
        // Like every invoice, it carries the late usage found so far.
        lines.extend(bill_late_usage(s, meter, at, sink).await?.0);
        issue_invoice(s, Period { start: at, end: period.end }, lines, at, sink).await;
    }
    Ok(())
}
