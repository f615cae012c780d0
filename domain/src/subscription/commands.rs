use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{Addons, PlanTerms};
use crate::plan::BillingPeriod;
use crate::values::TaxRate;

/// What can be asked of a subscription. Every instant comes in the command.
#[derive(Debug, Clone)]
pub enum SubscriptionCommand {
    /// Open the subscription with the tenant.
    Start(Box<StartSubscription>),
    /// Switch plan (and maybe billing period): upgrades at once with proration, downgrades at
    /// period end unless `immediately`.
    ChangePlan {
        /// The new plan's terms.
        plan: PlanTerms,
        /// The new billing period (`None`: keep).
        billing_period: Option<BillingPeriod>,
        /// Apply a downgrade now instead of at period end.
        immediately: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// End it, now or at period end.
    Cancel {
        /// Whether to wait for the period end.
        at_period_end: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// Withdraw a pending cancellation.
    Resume {
        /// When.
        at: DateTime<Utc>,
    },
    /// Set the add-ons (billed from the next period on).
    SetAddons {
        /// The new add-ons.
        addons: Addons,
        /// When.
        at: DateTime<Utc>,
    },
    /// Process every trial end, renewal and grace expiry up to `as_of` (the billing run).
    AdvanceTo {
        /// The instant to advance to.
        as_of: DateTime<Utc>,
    },
    /// Voids an open invoice that has not been paid: it is never due again and never counts
    /// for dunning.
    VoidInvoice {
        /// The invoice.
        invoice_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Sets the payment terms of the invoices issued from now on.
    SetNetTerms {
        /// Days after issue an invoice is due (0-90).
        net_terms_days: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// Grants account credit, applied after tax to the next invoices until it is used or
    /// expires.
    GrantCredit {
        /// The grant's id.
        grant_id: Uuid,
        /// How much (positive, at most two decimals).
        amount: Decimal,
        /// Why (shown in the credit ledger).
        reason: String,
        /// When it stops counting (`None`: never).
        expires_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Issues a credit note against an invoice: it lowers what is due on an open invoice, and
    /// adds to the credit balance what is paid already.
    IssueCreditNote {
        /// The invoice.
        invoice_id: Uuid,
        /// The credited amount before tax (positive, at most two decimals).
        amount: Decimal,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Adds one seat (`extra_users` + 1) for an invitation beyond the seats, with
    /// `auto_add_seats`: the seat's price for the rest of the period goes on the next invoice.
    AddSeat {
        /// When.
        at: DateTime<Utc>,
    },
    /// Redeems a coupon: its discount applies to the invoices issued while it lasts.
    ApplyCoupon {
        /// The coupon's terms.
        coupon: crate::coupon::CouponTerms,
        /// When.
        at: DateTime<Utc>,
    },
    /// Removes the active coupon from the next invoice on.
    RemoveCoupon {
        /// When.
        at: DateTime<Utc>,
    },
    /// Record the payment provider's outcome for an invoice.
    RecordPayment {
        /// The provider's notification id (processed once).
        payment_id: String,
        /// The invoice paid (or not).
        invoice_id: Uuid,
        /// What happened.
        outcome: PaymentOutcome,
        /// When.
        at: DateTime<Utc>,
    },
}

impl SubscriptionCommand {
    /// The command's name as the event metadata records it (`command`), so that a replay of
    /// the log (the price simulation) knows which command each commit answered.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::ChangePlan { .. } => "change_plan",
            Self::Cancel { .. } => "cancel",
            Self::Resume { .. } => "resume",
            Self::SetAddons { .. } => "set_addons",
            Self::AdvanceTo { .. } => "advance_to",
            Self::VoidInvoice { .. } => "void_invoice",
            Self::SetNetTerms { .. } => "set_net_terms",
            Self::GrantCredit { .. } => "grant_credit",
            Self::IssueCreditNote { .. } => "issue_credit_note",
            Self::AddSeat { .. } => "add_seat",
            Self::ApplyCoupon { .. } => "apply_coupon",
            Self::RemoveCoupon { .. } => "remove_coupon",
            Self::RecordPayment { .. } => "record_payment",
        }
    }

    /// Whether the command decides on the subscription's whole history (the books of every
    /// invoice issued: a credit note's limit), which a [compact](super::Subscription::compact)
    /// state leaves out: such a command is decided on the state replayed from the whole stream.
    pub fn decides_on_history(&self) -> bool {
        matches!(self, Self::IssueCreditNote { .. })
    }
}

/// A payment notification's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Paid this amount in this currency.
    Succeeded {
        /// Amount paid.
        amount: Decimal,
        /// Its currency.
        currency: String,
        /// How, for a payment made outside the payment provider (`bank_transfer`, `card`,
        /// `cash`, `other`) and its reference; `None` for the provider's.
        offline: Option<(String, Option<String>)>,
    },
    /// The charge failed.
    Failed,
}

/// Opening a subscription.
#[derive(Debug, Clone)]
pub struct StartSubscription {
    /// Its id.
    pub subscription_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The tenant's code.
    pub tenant_code: String,
    /// Invoice currency.
    pub currency: String,
    /// Tax rate.
    pub tax_rate: TaxRate,
    /// Plan terms.
    pub plan: PlanTerms,
    /// Billing period.
    pub billing_period: BillingPeriod,
    /// Trial days (0: none).
    pub trial_days: u32,
    /// Days after issue an invoice is due (0-90).
    pub net_terms_days: u32,
    /// When.
    pub at: DateTime<Utc>,
}
