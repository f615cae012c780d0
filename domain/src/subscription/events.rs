use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Addons, BilledUsage, CreditGrant, InvoiceBook, MeteredCharge, PendingChange, PlanTerms, Subscription, SubscriptionStatus,
    LATE_USAGE_DAYS,
};
use crate::billing::invoice::{InvoiceLine, LineKind};
use crate::plan::BillingPeriod;
use crate::values::TaxRate;

/// What happened to a subscription: facts a reader of the log can use on their own (an
/// invoice event carries every line and total).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SubscriptionEvent {
    /// Opened with the tenant.
    SubscriptionStarted {
        /// Its id.
        subscription_id: Uuid,
        /// Its tenant.
        tenant_id: Uuid,
        /// The tenant's code.
        tenant_code: String,
        /// Invoice currency.
        currency: String,
        /// Tax rate.
        tax_rate: TaxRate,
        /// Plan terms.
        plan: PlanTerms,
        /// Billing period.
        billing_period: BillingPeriod,
        /// End of the trial, if there is one.
        trial_ends_at: Option<DateTime<Utc>>,
        /// The billing anchor (trial end, or start).
        anchor: DateTime<Utc>,
        /// When.
        started_at: DateTime<Utc>,
        /// Days after issue an invoice is due (absent before payment terms existed: 0).
        #[serde(default)]
        net_terms_days: u32,
    },
    /// A paid period began (trial end or renewal).
    PeriodStarted {
        /// Index of the period after the anchor.
        period_index: u32,
        /// Start.
        period_start: DateTime<Utc>,
        /// End.
        period_end: DateTime<Utc>,
    },
    /// An invoice was issued.
    InvoiceIssued {
        /// Its id.
        invoice_id: Uuid,
        /// Its per-tenant number (`ACME-000001`).
        number: String,
        /// The period it is for.
        period_start: DateTime<Utc>,
        /// End of that period.
        period_end: DateTime<Utc>,
        /// Currency.
        currency: String,
        /// Lines.
        lines: Vec<InvoiceLine>,
        /// Sum of the lines.
        subtotal: Decimal,
        /// Tax.
        tax: Decimal,
        /// Subtotal plus tax.
        total: Decimal,
        /// Account credit applied after tax (what is due is `total - credit_applied`; absent
        /// before credit was applied after tax: 0).
        #[serde(default)]
        credit_applied: Decimal,
        /// What the invoice carries to the credit balance: a downgrade's unused time, or the part
        /// of corrections' negative lines beyond the other lines with its tax (absent before it was
        /// stated: the positive `credit` lines).
        #[serde(default, skip_serializing_if = "Decimal::is_zero")]
        credit_carried: Decimal,
        /// When.
        issued_at: DateTime<Utc>,
        /// When payment is due.
        due_at: DateTime<Utc>,
        /// Set when nothing is to be paid (nothing due after credit).
        paid_at: Option<DateTime<Utc>>,
    },
    /// Account credit was granted.
    CreditGranted {
        /// The grant's id.
        grant_id: Uuid,
        /// How much.
        amount: Decimal,
        /// Why.
        reason: String,
        /// When it stops counting (`None`: never).
        expires_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// What was left of a credit grant stopped counting at its expiry.
    CreditExpired {
        /// The grant.
        grant_id: Uuid,
        /// What was left of it.
        amount: Decimal,
        /// Its expiry.
        at: DateTime<Utc>,
    },
    /// A seat was added for an invitation beyond the seats (`auto_add_seats`).
    SeatAdded {
        /// `extra_users` now.
        extra_users: u32,
        /// The line for the rest of the period, on the next invoice (`None` in a trial).
        charge: Option<InvoiceLine>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A coupon was redeemed (the database counts it against the coupon's `max_redemptions`
    /// in the same transaction).
    CouponApplied {
        /// The coupon's terms.
        coupon: crate::coupon::CouponTerms,
        /// When.
        at: DateTime<Utc>,
    },
    /// The coupon was removed before it ran out.
    CouponRemoved {
        /// Its code.
        code: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A credit note was issued against an invoice.
    CreditNoteIssued {
        /// Its id.
        credit_note_id: Uuid,
        /// Its per-tenant number (`CN-ACME-000001`).
        number: String,
        /// The invoice.
        invoice_id: Uuid,
        /// The credited amount before tax.
        subtotal: Decimal,
        /// Tax on it, at the invoice's rate.
        tax: Decimal,
        /// `subtotal + tax`.
        total: Decimal,
        /// Why.
        reason: String,
        /// How much of `total` lowered what was due on the invoice (an open invoice).
        applied_to_invoice: Decimal,
        /// How much of `total` went to the credit balance (a paid invoice, or what exceeded
        /// what was due).
        credited_to_balance: Decimal,
        /// When.
        created_at: DateTime<Utc>,
    },
    /// The plan (or billing period) changed now.
    PlanChanged {
        /// New terms.
        plan: PlanTerms,
        /// New billing period.
        billing_period: BillingPeriod,
        /// A new billing anchor when the billing period changed (periods restart there).
        new_anchor: Option<DateTime<Utc>>,
        /// When it took effect.
        effective_at: DateTime<Utc>,
    },
    /// A plan change was scheduled for the period end.
    PlanChangeScheduled {
        /// New terms.
        plan: PlanTerms,
        /// New billing period.
        billing_period: BillingPeriod,
        /// When it takes effect.
        effective_at: DateTime<Utc>,
    },
    /// A scheduled plan change was dropped.
    ScheduledPlanChangeDropped {
        /// When.
        at: DateTime<Utc>,
    },
    /// Cancellation at period end was requested.
    CancellationScheduled {
        /// When it takes effect.
        effective_at: DateTime<Utc>,
    },
    /// A pending cancellation was withdrawn.
    CancellationWithdrawn {
        /// When.
        at: DateTime<Utc>,
    },
    /// The subscription ended.
    SubscriptionCancelled {
        /// When.
        cancelled_at: DateTime<Utc>,
        /// Whether at once (rather than at a period end).
        immediately: bool,
    },
    /// The add-ons changed (billed from the next period).
    AddonsChanged {
        /// New add-ons.
        addons: Addons,
        /// When.
        at: DateTime<Utc>,
    },
    /// A payment failed; the subscription is past due.
    PaymentFailed {
        /// The provider's notification id.
        payment_id: String,
        /// The invoice.
        invoice_id: Uuid,
        /// When.
        failed_at: DateTime<Utc>,
    },
    /// An invoice was paid.
    PaymentSucceeded {
        /// The provider's notification id (`offline:<invoice id>` for a payment recorded by hand).
        payment_id: String,
        /// The invoice.
        invoice_id: Uuid,
        /// Amount paid.
        amount: Decimal,
        /// When.
        paid_at: DateTime<Utc>,
        /// How it was paid, for a payment recorded by hand (`bank_transfer`, `card`, `cash`,
        /// `other`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        /// The payment's reference (a bank transfer's, say), if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The grace period ran out unpaid.
    SubscriptionSuspended {
        /// When.
        suspended_at: DateTime<Utc>,
    },
    /// Failed invoices were paid; back in good standing.
    SubscriptionReactivated {
        /// When.
        reactivated_at: DateTime<Utc>,
    },
    /// An open invoice was voided: never due again, never counted for dunning.
    InvoiceVoided {
        /// The invoice.
        invoice_id: Uuid,
        /// When.
        voided_at: DateTime<Utc>,
    },
    /// A reminder that failed invoices are unpaid, on a day of the grace period.
    PaymentReminder {
        /// The unpaid invoices whose payment failed.
        invoice_ids: Vec<Uuid>,
        /// The day of the grace period (1, 3 or 6).
        grace_day: u32,
        /// When the grace period runs out (the subscription is then suspended).
        grace_expires_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The payment terms of the invoices issued from now on changed.
    NetTermsChanged {
        /// Days after issue an invoice is due.
        net_terms_days: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// A period's usage was billed (in arrears when the period closed, or again with late facts
    /// found later): per metric, what was counted and what it cost in all. Late facts are billed
    /// as the difference to the last such figures.
    UsageBilled {
        /// The period.
        period_start: DateTime<Utc>,
        /// Its end.
        period_end: DateTime<Utc>,
        /// Per metric.
        charges: Vec<MeteredCharge>,
        /// When.
        billed_at: DateTime<Utc>,
    },
}

impl SubscriptionEvent {
    /// The instant the fact took effect on the subscription's own timeline (a period's start,
    /// a cancellation's effective time), which can be earlier than when it was recorded: the
    /// billing run records a period that began while it was not running when it catches up.
    /// `None` for facts about the future (a scheduled change or cancellation).
    pub fn effective_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::SubscriptionStarted { started_at: at, .. }
            | Self::PeriodStarted { period_start: at, .. }
            | Self::InvoiceIssued { issued_at: at, .. }
            | Self::PlanChanged { effective_at: at, .. }
            | Self::ScheduledPlanChangeDropped { at }
            | Self::CancellationWithdrawn { at }
            | Self::SubscriptionCancelled { cancelled_at: at, .. }
            | Self::AddonsChanged { at, .. }
            | Self::PaymentFailed { failed_at: at, .. }
            | Self::PaymentSucceeded { paid_at: at, .. }
            | Self::SubscriptionSuspended { suspended_at: at }
            | Self::SubscriptionReactivated { reactivated_at: at }
            | Self::UsageBilled { billed_at: at, .. }
            | Self::NetTermsChanged { at, .. }
            | Self::InvoiceVoided { voided_at: at, .. }
            | Self::PaymentReminder { at, .. }
            | Self::CreditGranted { at, .. }
            | Self::CouponApplied { at, .. }
            | Self::SeatAdded { at, .. }
            | Self::CouponRemoved { at, .. }
            | Self::CreditExpired { at, .. }
            | Self::CreditNoteIssued { created_at: at, .. } => Some(*at),
            Self::PlanChangeScheduled { .. } | Self::CancellationScheduled { .. } => None,
        }
    }
}

impl DomainEvent for SubscriptionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SubscriptionStarted { .. } => "SubscriptionStarted",
            Self::PeriodStarted { .. } => "PeriodStarted",
            Self::InvoiceIssued { .. } => "InvoiceIssued",
            Self::PlanChanged { .. } => "PlanChanged",
            Self::PlanChangeScheduled { .. } => "PlanChangeScheduled",
            Self::ScheduledPlanChangeDropped { .. } => "ScheduledPlanChangeDropped",
            Self::CancellationScheduled { .. } => "CancellationScheduled",
            Self::CancellationWithdrawn { .. } => "CancellationWithdrawn",
            Self::SubscriptionCancelled { .. } => "SubscriptionCancelled",
            Self::AddonsChanged { .. } => "AddonsChanged",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::SubscriptionSuspended { .. } => "SubscriptionSuspended",
            Self::SubscriptionReactivated { .. } => "SubscriptionReactivated",
            Self::UsageBilled { .. } => "UsageBilled",
            Self::NetTermsChanged { .. } => "NetTermsChanged",
            Self::InvoiceVoided { .. } => "InvoiceVoided",
            Self::PaymentReminder { .. } => "PaymentReminder",
            Self::CreditGranted { .. } => "CreditGranted",
            Self::CouponApplied { .. } => "CouponApplied",
            Self::SeatAdded { .. } => "SeatAdded",
            Self::CouponRemoved { .. } => "CouponRemoved",
            Self::CreditExpired { .. } => "CreditExpired",
            Self::CreditNoteIssued { .. } => "CreditNoteIssued",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Uses `amount` of the credit that counts at `at`: the grants that expire soonest first,
/// grants that never expire last.
fn use_credit(s: &mut Subscription, mut amount: Decimal, at: DateTime<Utc>) {
    if amount > Decimal::ZERO {
        let mut order: Vec<usize> = (0..s.credits.len()).filter(|&i| s.credits[i].expires_at.is_none_or(|e| e > at)).collect();
        order.sort_by_key(|&i| (s.credits[i].expires_at.is_none(), s.credits[i].expires_at));
        for i in order {
            let used = amount.min(s.credits[i].remaining);
            s.credits[i].remaining -= used;
            amount -= used;
        }
        s.credits.retain(|g| g.remaining > Decimal::ZERO);
    }
    s.credit_balance = s.credits.iter().map(|g| g.remaining).sum();
}

/// The event types that change what a booking of the tenant is decided on (the plan's limits,
/// the add-ons): the booking context stamp (migration 0020) moves for these alone. A new event
/// that changes `plan` or `addons` in [`apply`] belongs here and in that migration's trigger.
pub const BOOKING_CONTEXT_EVENTS: [&str; 3] = ["SubscriptionStarted", "PlanChanged", "AddonsChanged"];

pub(super) fn apply(s: &mut Subscription, event: SubscriptionEvent) {
    use SubscriptionEvent as E;
    match event {
        E::SubscriptionStarted {
            subscription_id,
            tenant_id,
            tenant_code,
            currency,
            tax_rate,
            plan,
            billing_period,
            trial_ends_at,
            anchor,
            started_at,
            net_terms_days,
        } => {
            s.net_terms_days = net_terms_days;
            s.id = Some(subscription_id);
            s.tenant_id = Some(tenant_id);
            s.tenant_code = tenant_code;
            s.currency = currency;
            s.tax_rate = tax_rate;
            s.plan = Some(plan);
            s.billing_period = Some(billing_period);
            s.started_at = Some(started_at);
            s.trial_ends_at = trial_ends_at;
            s.anchor = Some(anchor);
            s.status = if trial_ends_at.is_some() { SubscriptionStatus::Trialing } else { SubscriptionStatus::Active };
        }
        E::PeriodStarted { period_index, .. } => {
            s.period_index = period_index;
            if s.status == SubscriptionStatus::Trialing {
                s.status = SubscriptionStatus::Active;
            }
        }
        E::InvoiceIssued { invoice_id, subtotal, total, credit_applied, credit_carried, paid_at, lines, issued_at, .. } => {
            s.invoices_issued += 1;
            s.pending_lines.clear();
            // Every invoice first bills the late usage found so far; a period whose window has
            // closed can have no more, so it is done with.
            s.usage_billed.retain(|_, billed| billed.period_end + chrono::Duration::days(LATE_USAGE_DAYS) > issued_at);
            // `credit` lines: a downgrade's unused time carried to the balance (positive), or,
            // in invoices issued before credit was applied after tax, credit applied (negative).
            for line in lines.iter().filter(|l| l.kind == LineKind::Credit) {
                if line.amount > Decimal::ZERO {
                    // Carried: `credit_carried` when stated (it adds the tax on a correction's excess).
                    let carried = if credit_carried > Decimal::ZERO { credit_carried } else { line.amount };
                    let id = Uuid::new_v5(&invoice_id, b"carried-credit");
                    s.credits.push(CreditGrant { id, remaining: carried, expires_at: None });
                } else {
                    use_credit(s, -line.amount, issued_at);
                }
            }
            use_credit(s, credit_applied, issued_at);
            // A discount lasts a number of invoices: each invoice it lowered counts.
            if lines.iter().any(|l| l.kind == LineKind::Discount) {
                if let Some(discount) = s.discount.as_mut() {
                    if let Some(left) = discount.invoices_left.as_mut() {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            s.discount = None;
                        }
                    }
                }
            }
            s.invoice_books.insert(invoice_id, InvoiceBook { subtotal, credited: Decimal::ZERO });
            if paid_at.is_none() {
                s.unpaid.insert(invoice_id, total - credit_applied);
            }
        }
        E::CreditGranted { grant_id, amount, expires_at, .. } => {
            s.credits.push(CreditGrant { id: grant_id, remaining: amount, expires_at });
            s.credit_balance = s.credits.iter().map(|g| g.remaining).sum();
        }
        E::SeatAdded { extra_users, charge, .. } => {
            s.addons.extra_users = extra_users;
            s.pending_lines.extend(charge);
        }
        E::CouponApplied { coupon, at } => {
            let invoices_left = coupon.invoices();
            s.discount = Some(super::ActiveDiscount { coupon, invoices_left, applied_at: at });
        }
        E::CouponRemoved { .. } => s.discount = None,
        E::CreditExpired { grant_id, .. } => {
            s.credits.retain(|g| g.id != grant_id);
            s.credit_balance = s.credits.iter().map(|g| g.remaining).sum();
        }
        E::CreditNoteIssued { credit_note_id, invoice_id, subtotal, applied_to_invoice, credited_to_balance, .. } => {
            s.credit_notes_issued += 1;
            if let Some(book) = s.invoice_books.get_mut(&invoice_id) {
                book.credited += subtotal;
            }
            if let Some(due) = s.unpaid.get_mut(&invoice_id) {
                *due -= applied_to_invoice;
                if *due <= Decimal::ZERO {
                    // Settled by the credit note.
                    s.unpaid.remove(&invoice_id);
                    s.failed.remove(&invoice_id);
                    s.payments_pending.remove(&invoice_id);
                }
            }
            if credited_to_balance > Decimal::ZERO {
                s.credits.push(CreditGrant { id: credit_note_id, remaining: credited_to_balance, expires_at: None });
                s.credit_balance = s.credits.iter().map(|g| g.remaining).sum();
            }
        }
        E::PlanChanged { plan, billing_period, new_anchor, .. } => {
            s.plan = Some(plan);
            s.billing_period = Some(billing_period);
            s.pending_change = None;
            if let Some(anchor) = new_anchor {
                s.anchor = Some(anchor);
                s.period_index = 0;
            }
        }
        E::PlanChangeScheduled { plan, billing_period, effective_at } => {
            s.pending_change = Some(PendingChange { plan, billing_period, effective_at });
        }
        E::ScheduledPlanChangeDropped { .. } => s.pending_change = None,
        E::CancellationScheduled { .. } => s.cancel_at_period_end = true,
        E::CancellationWithdrawn { .. } => s.cancel_at_period_end = false,
        E::SubscriptionCancelled { cancelled_at, .. } => {
            s.status = SubscriptionStatus::Cancelled;
            s.cancelled_at = Some(cancelled_at);
            s.cancel_at_period_end = false;
            s.pending_change = None;
        }
        E::AddonsChanged { addons, .. } => s.addons = addons,
        E::PaymentFailed { payment_id, invoice_id, failed_at } => {
            s.payments_pending.entry(invoice_id).or_default().insert(payment_id);
            s.failed.insert(invoice_id);
            if matches!(s.status, SubscriptionStatus::Active | SubscriptionStatus::Trialing) {
                s.status = SubscriptionStatus::PastDue;
                s.past_due_since = Some(failed_at);
                s.reminded_day = 0;
            }
        }
        E::PaymentSucceeded { invoice_id, .. } => {
            s.unpaid.remove(&invoice_id);
            s.failed.remove(&invoice_id);
            s.payments_pending.remove(&invoice_id);
        }
        E::SubscriptionSuspended { .. } => s.status = SubscriptionStatus::Suspended,
        E::SubscriptionReactivated { .. } => {
            s.status = SubscriptionStatus::Active;
            s.past_due_since = None;
            s.reminded_day = 0;
        }
        E::NetTermsChanged { net_terms_days, .. } => s.net_terms_days = net_terms_days,
        E::InvoiceVoided { invoice_id, .. } => {
            s.unpaid.remove(&invoice_id);
            s.failed.remove(&invoice_id);
            s.payments_pending.remove(&invoice_id);
            s.voided.insert(invoice_id);
        }
        E::PaymentReminder { grace_day, .. } => s.reminded_day = grace_day,
        E::UsageBilled { period_start, period_end, charges, billed_at } => {
            s.usage_billed.insert(period_start, BilledUsage { period_end, charges, billed_at });
        }
    }
}
