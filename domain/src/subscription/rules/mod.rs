//! The subscription's decisions: which events each command leads to.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{
    BillableUsage, MeteredCharge, PaymentOutcome, StartSubscription, Subscription, SubscriptionCommand, SubscriptionError,
    SubscriptionEvent as E, SubscriptionStatus as S, UsageMeter,
};
use std::collections::BTreeMap;

use crate::billing::charges::Charge;
use crate::billing::invoice::{totals, InvoiceLine, LineKind};
use crate::billing::money::round_cents;
use crate::billing::period::{self, months_in, Period};
use crate::billing::{pricing, proration};
use crate::tenant::MAX_TRIAL_DAYS;
use crate::ValidationError;

type Sink = EventSink<Subscription>;
type Outcome = Result<(), SubscriptionError>;

pub(super) async fn handle(s: &mut Subscription, command: SubscriptionCommand, meter: &dyn UsageMeter, sink: &Sink) -> Outcome {
    use SubscriptionCommand as C;
    if s.status == S::New && !matches!(command, C::Start(_)) {
        return Err(SubscriptionError::NotFound);
    }
    match command {
        C::Start(start) => start_subscription(s, *start, sink).await,
        C::ChangePlan { plan, billing_period, immediately, at } => change_plan(s, plan, billing_period, immediately, at, meter, sink).await,
        C::Cancel { at_period_end, at } => cancel(s, at_period_end, at, meter, sink).await,
        C::Resume { at } => {
            if s.status == S::Cancelled || !s.cancel_at_period_end {
                return Err(SubscriptionError::InvalidTransition { action: "resume (no cancellation is pending)", status: s.status });
            }
            sink.write(E::CancellationWithdrawn { at }, s).await;
            Ok(())
        }
        C::SetAddons { addons, at } => {
            if s.status == S::Cancelled {
                return Err(SubscriptionError::InvalidTransition { action: "change the add-ons of", status: s.status });
            }
            if addons != s.addons {
                sink.write(E::AddonsChanged { addons, at }, s).await;
            }
            Ok(())
        }
        C::AdvanceTo { as_of } => advance_to(s, as_of, meter, sink).await,
        C::VoidInvoice { invoice_id, at } => {
            let subscription_id = s.id.expect("started");
            if !(1..=s.invoices_issued).any(|n| self::invoice_id(subscription_id, n) == invoice_id) {
                return Err(SubscriptionError::InvoiceNotFound);
            }
            if s.voided.contains(&invoice_id) {
                return Err(SubscriptionError::InvoiceNotOpen("void"));
            }
            if !s.unpaid.contains_key(&invoice_id) {
                return Err(SubscriptionError::InvoiceNotOpen("paid"));
            }
            sink.write(E::InvoiceVoided { invoice_id, voided_at: at }, s).await;
            // A void invoice no longer counts for dunning.
            if matches!(s.status, S::PastDue | S::Suspended) && s.failed.is_empty() {
                sink.write(E::SubscriptionReactivated { reactivated_at: at }, s).await;
            }
            Ok(())
        }
        C::SetNetTerms { net_terms_days, at } => {
            if s.status == S::Cancelled {
                return Err(SubscriptionError::InvalidTransition { action: "change the payment terms of", status: s.status });
            }
            if net_terms_days > super::MAX_NET_TERMS_DAYS {
                return Err(ValidationError::new("net_terms_days", format!("must be between 0 and {}", super::MAX_NET_TERMS_DAYS)).into());
            }
            if net_terms_days != s.net_terms_days {
                sink.write(E::NetTermsChanged { net_terms_days, at }, s).await;
            }
            Ok(())
        }
        C::AddSeat { at } => {
            if s.status == S::Cancelled {
                return Err(SubscriptionError::InvalidTransition { action: "add a seat to", status: s.status });
            }
            let extra_users = s.addons.extra_users + 1;
            let charge = match (s.status, s.current_period()) {
                (S::Trialing, _) | (_, None) => None,
                (_, Some(period)) => {
                    let months = Decimal::from(months_in(s.billing_period.expect("started")));
                    let price = pricing::extra_user_monthly() * months;
                    let amount = proration::split(Decimal::ZERO, price, period, at).charge;
                    let description = format!("Extra user added {}, rest of {}", at.format("%Y-%m-%d %H:%M UTC"), dates(period));
                    (amount > Decimal::ZERO).then(|| InvoiceLine::fixed(LineKind::Addon, description, amount))
                }
            };
            sink.write(E::SeatAdded { extra_users, charge, at }, s).await;
            Ok(())
        }
        C::ApplyCoupon { coupon, at } => {
            if s.status == S::Cancelled {
                return Err(SubscriptionError::InvalidTransition { action: "redeem a coupon on", status: s.status });
            }
            if let Some(active) = &s.discount {
                let message = format!("the coupon {} is already active", active.coupon.code);
                return Err(SubscriptionError::CouponNotApplicable { reason: "already_active", message, coupon: coupon.code });
            }
            let plan = s.plan.as_ref().expect("started");
            if let Some((reason, message)) = coupon.refusal(plan.code.as_str(), &s.currency, at) {
                return Err(SubscriptionError::CouponNotApplicable { reason, message, coupon: coupon.code });
            }
            sink.write(E::CouponApplied { coupon, at }, s).await;
            Ok(())
        }
        C::RemoveCoupon { at } => {
            let Some(active) = &s.discount else { return Err(SubscriptionError::NothingToChange("no coupon is active")) };
            let code = active.coupon.code.clone();
            sink.write(E::CouponRemoved { code, at }, s).await;
            Ok(())
        }
        C::GrantCredit { grant_id, amount, reason, expires_at, at } => {
            grant_credit(s, grant_id, amount, reason, expires_at, at, sink).await
        }
        C::IssueCreditNote { invoice_id, amount, reason, at } => issue_credit_note(s, invoice_id, amount, reason, at, sink).await,
        C::RecordPayment { payment_id, invoice_id, outcome, at } => record_payment(s, payment_id, invoice_id, outcome, at, sink).await,
    }
}

async fn start_subscription(s: &mut Subscription, start: StartSubscription, sink: &Sink) -> Outcome {
    if s.status != S::New {
        return Err(SubscriptionError::AlreadyExists);
    }
    if start.trial_days > MAX_TRIAL_DAYS {
        return Err(ValidationError::new("trial_days", format!("must be between 0 and {MAX_TRIAL_DAYS}")).into());
    }
    if start.net_terms_days > super::MAX_NET_TERMS_DAYS {
        return Err(ValidationError::new("net_terms_days", format!("must be between 0 and {}", super::MAX_NET_TERMS_DAYS)).into());
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
async fn begin_period(s: &mut Subscription, index: u32, arrears: Vec<InvoiceLine>, at: DateTime<Utc>, sink: &Sink) {
    let period = period::nth(s.anchor.expect("started"), s.billing_period.expect("started"), index);
    sink.write(E::PeriodStarted { period_index: index, period_start: period.start, period_end: period.end }, s).await;
    let mut lines = advance_lines(s, period);
    lines.extend(arrears);
    issue_invoice(s, period, lines, at, sink).await;
}

/// The plan fee and add-ons for `period`, in advance.
fn advance_lines(s: &Subscription, period: Period) -> Vec<InvoiceLine> {
    let plan = s.plan.as_ref().expect("started");
    let billing_period = s.billing_period.expect("started");
    let months = Decimal::from(months_in(billing_period));
    let dates = format!("{} – {}", period.start.format("%Y-%m-%d"), period.end.format("%Y-%m-%d"));
    let mut lines = vec![InvoiceLine::new(
        LineKind::Plan,
        format!("{} plan ({}), {dates}", plan.name, billing_period.as_str()),
        Decimal::ONE,
        plan.price(billing_period),
    )];
    if s.addons.extra_users > 0 {
        lines.push(InvoiceLine::new(
            LineKind::Addon,
            format!("Extra users, {dates}"),
            Decimal::from(s.addons.extra_users),
            pricing::extra_user_monthly() * months,
        ));
    }
    if s.addons.extra_storage_gb > 0 {
        lines.push(InvoiceLine::new(
            LineKind::Addon,
            format!("Extra storage (GB), {dates}"),
            Decimal::from(s.addons.extra_storage_gb),
            pricing::extra_storage_gb_monthly() * months,
        ));
    }
    lines
}

/// What a period's `usage` costs when `allowance` API calls are included (`None`: unlimited):
/// API calls beyond it per started 1,000, and SMS each.
fn charges_for(usage: BillableUsage, allowance: Option<u64>) -> Vec<MeteredCharge> {
    let blocks = pricing::api_call_overage_blocks(usage.api_calls, allowance);
    vec![
        MeteredCharge {
            charge: None,
            metric: API_CALLS.into(),
            quantity: usage.api_calls,
            included: allowance,
            amount: round_cents(Decimal::from(blocks) * pricing::api_call_block()),
        },
        MeteredCharge {
            charge: None,
            metric: SMS.into(),
            quantity: usage.sms,
            included: None,
            amount: round_cents(Decimal::from(usage.sms) * pricing::sms_each()),
        },
    ]
}

/// The plan's own charges on `usage` of a period: their lines and what each counted and cost.
fn plan_charges(charges: &[Charge], usage: &BTreeMap<String, u64>, dates: &str) -> (Vec<InvoiceLine>, Vec<MeteredCharge>) {
    let (mut lines, mut billed) = (Vec::new(), Vec::new());
    for charge in charges {
        let quantity = usage.get(&charge.metric).copied().unwrap_or(0);
        let priced = charge.lines(quantity, dates);
        let amount = priced.iter().map(|l| l.amount).sum();
        lines.extend(priced);
        billed.push(MeteredCharge {
            charge: Some(charge.clone()),
            metric: charge.metric.clone(),
            quantity,
            included: Some(charge.included),
            amount,
        });
    }
    (lines, billed)
}

const API_CALLS: &str = "api_calls";
const SMS: &str = "sms";

fn dates(period: Period) -> String {
    format!("{} – {}", period.start.format("%Y-%m-%d"), period.end.format("%Y-%m-%d"))
}

/// Usage of the closed `period` billed in arrears under the current terms: the invoice lines
/// (API calls beyond the allowance, SMS) and the `UsageBilled` fact that remembers what they
/// counted, for late facts.
async fn arrears(
    s: &Subscription,
    meter: &dyn UsageMeter,
    period: Period,
    at: DateTime<Utc>,
) -> Result<(Vec<InvoiceLine>, E), SubscriptionError> {
    let usage = meter.billable_usage(s.tenant_id.expect("started"), period).await.map_err(SubscriptionError::UsageUnavailable)?;
    let plan = s.plan.as_ref().expect("started");
    let months = u64::from(months_in(s.billing_period.expect("started")));
    let allowance = plan.limits.api_calls_per_month.map(|a| a * months);
    let dates = dates(period);
    let mut lines = Vec::new();
    // The plan's own charges; the default catalog's API-call overage is billed as built in.
    let own: Vec<Charge> = plan.charges.iter().filter(|c| !c.is_api_call_overage(plan.limits.api_calls_per_month)).cloned().collect();
    let charged = |metric: &str| own.iter().any(|c| c.metric == metric);
    let blocks = if charged(API_CALLS) { 0 } else { pricing::api_call_overage_blocks(usage.api_calls, allowance) };
    if blocks > 0 {
        let description = format!(
            "API calls beyond the allowance: {} of {} included, per started 1,000, {dates}",
            usage.api_calls,
            allowance.unwrap_or_default()
        );
        lines.push(InvoiceLine::new(LineKind::Overage, description, Decimal::from(blocks), pricing::api_call_block()));
    }
    if usage.sms > 0 && !charged(SMS) {
        lines.push(InvoiceLine::new(LineKind::Overage, format!("SMS, {dates}"), Decimal::from(usage.sms), pricing::sms_each()));
    }
    let mut charges: Vec<MeteredCharge> = charges_for(usage, allowance).into_iter().filter(|c| !charged(&c.metric)).collect();
    if !own.is_empty() {
        let metrics = own.iter().map(|c| c.metric.clone()).collect();
        let metered = meter.metered(s.tenant_id.expect("started"), period, metrics).await.map_err(SubscriptionError::UsageUnavailable)?;
        let (priced, billed) = plan_charges(&own, &metered, &dates);
        lines.extend(priced);
        charges.extend(billed);
    }
    let billed = E::UsageBilled { period_start: period.start, period_end: period.end, charges, billed_at: at };
    Ok((lines, billed))
}

/// Bills the usage of the closed `period` in arrears and the late usage found in earlier
/// periods: writes their `UsageBilled` facts and answers the invoice lines.
async fn bill_usage(
    s: &mut Subscription,
    meter: &dyn UsageMeter,
    period: Period,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Result<Vec<InvoiceLine>, SubscriptionError> {
    let (mut lines, billed) = arrears(s, meter, period, at).await?;
    // Before the closed period joins the billed ones, so that it is not read twice.
    let (late, _) = bill_late_usage(s, meter, at, sink).await?;
    sink.write(billed, s).await;
    lines.extend(late);
    Ok(lines)
}

/// [`late_usage`], with its `UsageBilled` facts written: the lines and the span of the periods.
async fn bill_late_usage(
    s: &mut Subscription,
    meter: &dyn UsageMeter,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Result<(Vec<InvoiceLine>, Option<Period>), SubscriptionError> {
    let (lines, billed, span) = late_usage(s, meter, at).await?;
    for event in billed {
        sink.write(event, s).await;
    }
    Ok((lines, span))
}

/// Late usage found at `at`: for every billed period whose usage can still change (see
/// [`super::LATE_USAGE_DAYS`]) and has changed, the charge for the period with the late facts
/// minus what was billed for it, under the period's own terms (its allowance), as lines naming
/// the period, and the `UsageBilled` facts with the new figures. Also the span of those periods.
async fn late_usage(
    s: &Subscription,
    meter: &dyn UsageMeter,
    at: DateTime<Utc>,
) -> Result<(Vec<InvoiceLine>, Vec<E>, Option<Period>), SubscriptionError> {
    let tenant_id = s.tenant_id.expect("started");
    let (mut lines, mut events, mut span) = (Vec::new(), Vec::new(), None::<Period>);
    for (&start, billed) in &s.usage_billed {
        let period = Period { start, end: billed.period_end };
        let dates = dates(period);
        // The plan's own charges of the period, priced again under the charges that billed them.
        let own: Vec<Charge> = billed.charges.iter().filter_map(|c| c.charge.clone()).collect();
        let mut charges: Vec<MeteredCharge> = Vec::new();
        let mut changed = false;
        if !own.is_empty() {
            let metrics = own.iter().map(|c| c.metric.clone()).collect();
            let metered = meter.metered(tenant_id, period, metrics).await.map_err(SubscriptionError::UsageUnavailable)?;
            let (_, now) = plan_charges(&own, &metered, &dates);
            for (after, before) in now.iter().zip(billed.charges.iter().filter(|c| c.charge.is_some())) {
                if after.quantity > before.quantity {
                    changed = true;
                    let extra = after.amount - before.amount;
                    if extra > Decimal::ZERO {
                        let description =
                            format!("{}, late usage for {dates}: {} ({} billed before)", after.metric, after.quantity, before.quantity);
                        lines.push(InvoiceLine::fixed(LineKind::Usage, description, extra));
                    }
                }
            }
            charges.extend(now);
        }
        let builtin = |metric: &str| billed.charges.iter().any(|c| c.charge.is_none() && c.metric == metric);
        let usage = if builtin(API_CALLS) || builtin(SMS) {
            meter.billable_usage(tenant_id, period).await.map_err(SubscriptionError::UsageUnavailable)?
        } else {
            BillableUsage::default()
        };
        let before = |metric: &str| billed.charges.iter().find(|c| c.charge.is_none() && c.metric == metric);
        let counted = |metric: &str| before(metric).map_or(0, |c| c.quantity);
        let builtin_changed = (builtin(API_CALLS) && usage.api_calls > counted(API_CALLS)) || (builtin(SMS) && usage.sms > counted(SMS));
        if !changed && !builtin_changed {
            continue;
        }
        let allowance = before(API_CALLS).and_then(|c| c.included);
        charges.splice(0..0, charges_for(usage, allowance).into_iter().filter(|c| builtin(&c.metric)));
        let extra = |metric: &str| {
            let now = charges.iter().find(|c| c.metric == metric).map_or(Decimal::ZERO, |c| c.amount);
            now - before(metric).map_or(Decimal::ZERO, |c| c.amount)
        };
        if builtin(API_CALLS) && extra(API_CALLS) > Decimal::ZERO {
            let blocks = pricing::api_call_overage_blocks(usage.api_calls, allowance)
                - pricing::api_call_overage_blocks(counted(API_CALLS), allowance);
            let description = format!(
                "API calls beyond the allowance, late usage for {dates}: {} of {} included ({} billed before), per started 1,000",
                usage.api_calls,
                allowance.unwrap_or_default(),
                counted(API_CALLS)
            );
            lines.push(InvoiceLine::new(LineKind::Overage, description, Decimal::from(blocks), pricing::api_call_block()));
        }
        if builtin(SMS) && extra(SMS) > Decimal::ZERO {
            let description = format!("SMS, late usage for {dates} ({} billed before)", counted(SMS));
            lines.push(InvoiceLine::new(LineKind::Overage, description, Decimal::from(usage.sms - counted(SMS)), pricing::sms_each()));
        }
        span = Some(span.map_or(period, |p| Period { start: p.start.min(period.start), end: p.end.max(period.end) }));
        events.push(E::UsageBilled { period_start: start, period_end: period.end, charges, billed_at: at });
    }
    Ok((lines, events, span))
}

/// Issues an invoice for `period` with `lines`: a negative sum (an immediate downgrade's
/// unused difference) is carried to account credit, so no invoice ever has a negative total;
/// then tax; then the account credit that counts at `at` is applied to the total (never more
/// than either), and an invoice with nothing left to pay is paid at issue.
async fn issue_invoice(s: &mut Subscription, period: Period, mut lines: Vec<InvoiceLine>, at: DateTime<Utc>, sink: &Sink) {
    // Charges waiting for the next invoice (seats added during the last period).
    lines.extend(s.pending_lines.iter().cloned());
    // A coupon's discount, before tax, on the sum of the other lines: never below zero.
    if let Some(discount) = &s.discount {
        let off = discount.coupon.discount(lines.iter().map(|l| l.amount).sum());
        if off > Decimal::ZERO {
            lines.push(InvoiceLine::fixed(LineKind::Discount, discount.coupon.describe(), -off));
        }
    }
    let sum: Decimal = lines.iter().map(|l| l.amount).sum();
    if sum < Decimal::ZERO {
        lines.push(InvoiceLine::fixed(LineKind::Credit, "Carried to account credit", -sum));
    }
    let money = totals(&lines, s.tax_rate);
    let credit_applied = credit_to_apply(money.total, s.available_credit(at));
    let number = s.invoices_issued + 1;
    let subscription_id = s.id.expect("started");
    sink.write(
        E::InvoiceIssued {
            invoice_id: invoice_id(subscription_id, number),
            number: format!("{}-{number:06}", s.tenant_code.to_ascii_uppercase()),
            period_start: period.start,
            period_end: period.end,
            currency: s.currency.clone(),
            lines,
            subtotal: money.subtotal,
            tax: money.tax,
            total: money.total,
            credit_applied,
            issued_at: at,
            due_at: at + Duration::days(i64::from(s.net_terms_days)),
            paid_at: (money.total - credit_applied <= Decimal::ZERO).then_some(at),
        },
        s,
    )
    .await;
}

/// The credit applied to an invoice of `total` when `available` counts: never more than
/// either, never negative.
pub(crate) fn credit_to_apply(total: Decimal, available: Decimal) -> Decimal {
    total.min(available).max(Decimal::ZERO)
}

/// The largest single credit grant or credit note.
const MAX_CREDIT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

/// `amount` as money: positive, at most two decimals, at most [`MAX_CREDIT`].
fn credit_amount(amount: Decimal) -> Result<Decimal, SubscriptionError> {
    if amount <= Decimal::ZERO || amount > MAX_CREDIT || amount.normalize().scale() > 2 {
        return Err(ValidationError::new("amount", "must be a positive amount with at most two decimals, at most 1000000000.00").into());
    }
    Ok(round_cents(amount))
}

/// A reason: 1 to 500 characters, no control characters.
fn reason(reason: String) -> Result<String, SubscriptionError> {
    let trimmed = reason.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 500 || trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new("reason", "must be 1 to 500 characters without control characters").into());
    }
    Ok(trimmed.to_owned())
}

async fn grant_credit(
    s: &mut Subscription,
    grant_id: Uuid,
    amount: Decimal,
    why: String,
    expires_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    let amount = credit_amount(amount)?;
    let reason = reason(why)?;
    if expires_at.is_some_and(|e| e <= at) {
        return Err(ValidationError::new("expires_at", "must be in the future").into());
    }
    if s.status == S::Cancelled {
        return Err(SubscriptionError::InvalidTransition { action: "grant credit to", status: s.status });
    }
    sink.write(E::CreditGranted { grant_id, amount, reason, expires_at, at }, s).await;
    Ok(())
}

async fn issue_credit_note(
    s: &mut Subscription,
    invoice_id: Uuid,
    amount: Decimal,
    why: String,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    let amount = credit_amount(amount)?;
    let reason = reason(why)?;
    let book = s.invoice_books.get(&invoice_id).cloned().ok_or(SubscriptionError::InvoiceNotFound)?;
    if s.voided.contains(&invoice_id) {
        return Err(SubscriptionError::InvoiceNotOpen("void"));
    }
    if book.credited + amount > book.subtotal {
        return Err(SubscriptionError::CreditNoteTooLarge { subtotal: book.subtotal, credited: book.credited, requested: amount });
    }
    let tax = round_cents(amount * s.tax_rate.percent() / Decimal::ONE_HUNDRED);
    let total = amount + tax;
    let due = s.unpaid.get(&invoice_id).copied().unwrap_or(Decimal::ZERO);
    let applied_to_invoice = total.min(due).max(Decimal::ZERO);
    let number = s.credit_notes_issued + 1;
    let subscription_id = s.id.expect("started");
    sink.write(
        E::CreditNoteIssued {
            credit_note_id: Uuid::new_v5(&subscription_id, format!("credit-note-{number}").as_bytes()),
            number: format!("CN-{}-{number:06}", s.tenant_code.to_ascii_uppercase()),
            invoice_id,
            subtotal: amount,
            tax,
            total,
            reason,
            applied_to_invoice,
            credited_to_balance: total - applied_to_invoice,
            created_at: at,
        },
        s,
    )
    .await;
    // An invoice settled by the note no longer counts for dunning.
    if matches!(s.status, S::PastDue | S::Suspended) && s.failed.is_empty() {
        sink.write(E::SubscriptionReactivated { reactivated_at: at }, s).await;
    }
    Ok(())
}

/// The id of a subscription's `number`-th invoice (deterministic, so replays agree).
pub(crate) fn invoice_id(subscription_id: Uuid, number: u32) -> Uuid {
    Uuid::new_v5(&subscription_id, format!("invoice-{number}").as_bytes())
}

async fn change_plan(
    s: &mut Subscription,
    plan: super::PlanTerms,
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
        );
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
        let mut lines = vec![
            InvoiceLine::fixed(LineKind::Proration, format!("Unused time on {} from {from}", current.name), -split.credit),
            InvoiceLine::fixed(LineKind::Proration, format!("Remaining time on {new_name} from {from}"), split.charge),
        ];
        // Like every invoice, it carries the late usage found so far.
        lines.extend(bill_late_usage(s, meter, at, sink).await?.0);
        issue_invoice(s, Period { start: at, end: period.end }, lines, at, sink).await;
    }
    Ok(())
}

async fn cancel(s: &mut Subscription, at_period_end: bool, at: DateTime<Utc>, meter: &dyn UsageMeter, sink: &Sink) -> Outcome {
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
pub(super) enum Due {
    CreditExpiry(Uuid),
    Reminder(u32),
    GraceExpired,
    TrialEnd,
    PeriodEnd,
}

/// The next thing that is due, and when (grace expiry first on a tie).
pub(super) fn next_due(s: &Subscription) -> Option<(DateTime<Utc>, Due)> {
    let mut candidates = Vec::new();
    if let Some(at) = s.grace_expires_at() {
        candidates.push((at, Due::GraceExpired));
        // The next payment reminder of the grace period, if any is left.
        if let (Some(since), Some(&day)) = (s.past_due_since, super::REMINDER_DAYS.iter().find(|&&d| d > s.reminded_day)) {
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

async fn advance_to(s: &mut Subscription, as_of: DateTime<Utc>, meter: &dyn UsageMeter, sink: &Sink) -> Outcome {
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

async fn record_payment(
    s: &mut Subscription,
    payment_id: String,
    invoice_id: Uuid,
    outcome: PaymentOutcome,
    at: DateTime<Utc>,
    sink: &Sink,
) -> Outcome {
    if s.payments_seen.contains(&payment_id) {
        return Ok(());
    }
    let subscription_id = s.id.expect("started");
    let Some(&total) = s.unpaid.get(&invoice_id) else {
        let ours = (1..=s.invoices_issued).any(|n| self::invoice_id(subscription_id, n) == invoice_id);
        // A notification about an invoice that is already paid changes nothing.
        return if ours { Ok(()) } else { Err(SubscriptionError::InvoiceNotFound) };
    };
    match outcome {
        PaymentOutcome::Succeeded { amount, currency, offline } => {
            if amount != total || currency != s.currency {
                return Err(SubscriptionError::PaymentMismatch {
                    expected: total,
                    expected_currency: s.currency.clone(),
                    paid: amount,
                    currency,
                });
            }
            let (method, reference) = offline.map_or((None, None), |(method, reference)| (Some(method), reference));
            sink.write(E::PaymentSucceeded { payment_id, invoice_id, amount, paid_at: at, method, reference }, s).await;
            if matches!(s.status, S::PastDue | S::Suspended) && s.failed.is_empty() {
                sink.write(E::SubscriptionReactivated { reactivated_at: at }, s).await;
            }
        }
        PaymentOutcome::Failed => sink.write(E::PaymentFailed { payment_id, invoice_id, failed_at: at }, s).await,
    }
    Ok(())
}
