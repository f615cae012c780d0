//! The subscription's decisions: which events each command leads to. [`handle`] dispatches each
//! command to the rule that decides it, one file per rule: [`lifecycle`] (start, periods,
//! cancellation), [`invoicing`], [`usage_billing`] (arrears and late usage), [`credit`] (grants
//! and credit notes), [`plan_change`] and [`dunning`] (payments).

mod credit;
mod dunning;
mod invoicing;
mod lifecycle;
mod plan_change;
mod usage_billing;

use credit::*;
use dunning::*;
use invoicing::*;
use lifecycle::*;
use plan_change::*;
use usage_billing::*;

pub(crate) use credit::credit_to_apply;
pub(crate) use invoicing::invoice_id;
pub(in crate::subscription) use lifecycle::next_due;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{
    BillableUsage, MeteredCharge, PaymentOutcome, Prefetched, StartSubscription, Subscription, SubscriptionCommand, SubscriptionError,
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
            if net_terms_days > crate::subscription::MAX_NET_TERMS_DAYS {
                return Err(ValidationError::new(
                    "net_terms_days",
                    format!("must be between 0 and {}", crate::subscription::MAX_NET_TERMS_DAYS),
                )
                .into());
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
                    (amount > Decimal::ZERO).then(|| {
                        InvoiceLine::fixed(LineKind::Addon, description, amount)
                            .over(Period { start: at.max(period.start), end: period.end })
                    })
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
