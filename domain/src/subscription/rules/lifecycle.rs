//! The subscription's life: starting (a trial or a first period), the periods that follow one
//! another as time passes (`AdvanceTo`: trial ends, renewals, grace expiries, pending plan
//! changes), and cancellation.

use super::*;

pub(super) async fn start_subscription(s: &mut Subscription, start: StartSubscription, sink: &Sink) -> Outcome {
    if s.status != S::New {
        return Err(SubscriptionError::AlreadyExists);
    }
    if start.trial_days > MAX_TRIAL_DAYS {
        return Err(ValidationError::new("trial_days", format!("must be between 0 and {MAX_TRIAL_DAYS}")).into());
    }
    if start.net_terms_days > crate::subscription::MAX_NET_TERMS_DAYS {
        return Err(
            ValidationError::new("net_terms_days", format!("must be between 0 and {}", crate::subscription::MAX_NET_TERMS_DAYS)).into()
        );
    }
    let trial_ends_at = (start.trial_days > 0).then(|| start.at + Duration::days(i64::from(start.trial_days)));
    let anchor = trial_ends_at.unwrap_or(start.at);
    sink.write(
        E::SubscriptionStarted {
            subscription_id: start.subscription_id,
            tenant_id: start.tenant_id,
            tenant_code: start.tenant_code,
            currency: start.currency,
            tax_rate: start.tax_rate,
            plan: start.plan,
            billing_period: start.billing_period,
            trial_ends_at,
            anchor,
            started_at: start.at,
            net_terms_days: start.net_terms_days,
        },
        s,
    )
    .await;
    if trial_ends_at.is_none() {
        begin_period(s, 0, Vec::new(), start.at, sink).await;
    }
    Ok(())
}

/// Starts period `index` after the anchor and invoices it in advance, plus `arrears`.
pub(super) async fn begin_period(s: &mut Subscription, index: u32, arrears: Vec<InvoiceLine>, at: DateTime<Utc>, sink: &Sink) {
    let period = period::nth(s.anchor.expect("started"), s.billing_period.expect("started"), index);
    sink.write(E::PeriodStarted { period_index: index, period_start: period.start, period_end: period.end }, s).await;
    let mut lines = advance_lines(s, period);
    lines.extend(arrears);
    issue_invoice(s, period, lines, at, sink).await;
}

pub(super) async fn cancel(s: &mut Subscription, at_period_end: bool, at: DateTime<Utc>, meter: &dyn UsageMeter, sink: &Sink) -> Outcome {
    if s.status == S::Cancelled {
        return Err(SubscriptionError::InvalidTransition { action: "cancel", status: s.status });
    }
    let period = s.current_period().expect("started");
    if at_period_end {
        if s.cancel_at_period_end {
            return Err(SubscriptionError::NothingToChange("the cancellation is already scheduled"));
        }
        sink.write(E::CancellationScheduled { effective_at: period.end }, s).await;
        return Ok(());
    }
    if s.status != S::Trialing {
        let used = Period { start: period.start, end: at.max(period.start) };
        let lines = bill_usage(s, meter, used, at, sink).await?;
        if !lines.is_empty() {
            issue_invoice(s, used, lines, at, sink).await;
        }
    }
    sink.write(E::SubscriptionCancelled { cancelled_at: at, immediately: true }, s).await;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::subscription) enum Due {
    CreditExpiry(Uuid),
    Reminder(u32),
    GraceExpired,
    TrialEnd,
    PeriodEnd,
}

/// The next thing that is due, and when (grace expiry first on a tie).
pub(in crate::subscription) fn next_due(s: &Subscription) -> Option<(DateTime<Utc>, Due)> {
    let mut candidates = Vec::new();
    if let Some(at) = s.grace_expires_at() {
        candidates.push((at, Due::GraceExpired));
        // The next payment reminder of the grace period, if any is left.
        if let (Some(since), Some(&day)) = (s.past_due_since, crate::subscription::REMINDER_DAYS.iter().find(|&&d| d > s.reminded_day)) {
            candidates.push((since + Duration::days(i64::from(day)), Due::Reminder(day)));
        }
    }
    // Credit that expires stops counting then; recorded in time order with everything else.
    if let Some(grant) = s.credits.iter().filter(|g| g.expires_at.is_some()).min_by_key(|g| g.expires_at) {
        candidates.push((grant.expires_at.expect("filtered"), Due::CreditExpiry(grant.id)));
    }
    match s.status {
        S::Trialing => candidates.push((s.trial_ends_at?, Due::TrialEnd)),
        S::Active | S::PastDue | S::Suspended => candidates.push((s.current_period()?.end, Due::PeriodEnd)),
        S::New | S::Cancelled => {}
    }
    candidates.into_iter().min_by_key(|(at, _)| *at)
}

pub(super) async fn advance_to(s: &mut Subscription, as_of: DateTime<Utc>, meter: &dyn UsageMeter, sink: &Sink) -> Outcome {
    while let Some((when, due)) = next_due(s).filter(|(when, _)| *when <= as_of) {
        match due {
            Due::GraceExpired => sink.write(E::SubscriptionSuspended { suspended_at: when }, s).await,
            Due::CreditExpiry(grant_id) => {
                let amount = s.credits.iter().find(|g| g.id == grant_id).map_or(Decimal::ZERO, |g| g.remaining);
                sink.write(E::CreditExpired { grant_id, amount, at: when }, s).await
            }
            Due::Reminder(grace_day) => {
                let invoice_ids = s.failed.iter().copied().collect();
                let grace_expires_at = s.grace_expires_at().expect("past due");
                sink.write(E::PaymentReminder { invoice_ids, grace_day, grace_expires_at, at: when }, s).await
            }
            Due::TrialEnd if s.cancel_at_period_end => {
                sink.write(E::SubscriptionCancelled { cancelled_at: when, immediately: false }, s).await
            }
            Due::TrialEnd => begin_period(s, 0, Vec::new(), when, sink).await,
            Due::PeriodEnd => {
                let closed = s.current_period().expect("started");
                let arrears = bill_usage(s, meter, closed, when, sink).await?;
                if s.cancel_at_period_end {
                    if !arrears.is_empty() {
                        issue_invoice(s, closed, arrears, when, sink).await;
                    }
                    sink.write(E::SubscriptionCancelled { cancelled_at: when, immediately: false }, s).await;
                    continue;
                }
                let mut next_index = s.period_index + 1;
                if let Some(change) = s.pending_change.clone() {
                    let new_anchor = (Some(change.billing_period) != s.billing_period).then_some(when);
                    if new_anchor.is_some() {
                        next_index = 0;
                    }
                    sink.write(
                        E::PlanChanged { plan: change.plan, billing_period: change.billing_period, new_anchor, effective_at: when },
                        s,
                    )
                    .await;
                }
                begin_period(s, next_index, arrears, when, sink).await;
            }
        }
    }
    // A cancelled subscription has no next invoice: late usage in its billed periods gets a
    // final one.
    if s.status == S::Cancelled && s.cancelled_at.is_some_and(|at| at <= as_of) && !s.usage_billed.is_empty() {
        let (lines, span) = bill_late_usage(s, meter, as_of, sink).await?;
        if let (false, Some(span)) = (lines.is_empty(), span) {
            issue_invoice(s, span, lines, as_of, sink).await;
        }
    }
    Ok(())
}
