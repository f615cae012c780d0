//! The Subscription aggregate: a tenant's plan, its billing periods, its invoices and its
//! payment standing.
//!
//! Lifecycle: `trialing` → `active` at trial end → `past_due` on a failed payment →
//! `suspended` 7 days later if still unpaid → `active` again once the failed invoices are paid;
//! `cancelled` immediately or at period end (a pending cancellation can be withdrawn).
//! Time only moves through commands: [`SubscriptionCommand::AdvanceTo`] (the billing run)
//! processes, in chronological order, every trial end, renewal and grace expiry up to its
//! instant, and is idempotent: advancing to an instant already reached appends nothing.
//!
//! Invoices are facts of this aggregate (`InvoiceIssued`), numbered per subscription (one per
//! tenant, so per tenant), with ids derived from the subscription id and number: re-running
//! the same history gives the same ids.

mod commands;
mod error;
mod events;
mod rules;
pub mod simulation;

pub use commands::{PaymentOutcome, StartSubscription, SubscriptionCommand};
pub use error::SubscriptionError;
pub use events::{SubscriptionEvent, BOOKING_CONTEXT_EVENTS};

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::billing::period::{self, Period};
use crate::plan::{BillingPeriod, Plan, PlanCode, PlanLimits};
use crate::values::TaxRate;

/// Days a failed payment may stay unpaid before the subscription is suspended.
pub const GRACE_DAYS: i64 = 7;

/// The days of the grace period on which a payment reminder goes out.
pub const REMINDER_DAYS: [u32; 3] = [1, 3, 6];

/// The longest payment terms: an invoice is due at most this many days after it is issued.
pub const MAX_NET_TERMS_DAYS: u32 = 90;

/// How long after a period's end its usage can still change: a usage fact may be recorded up
/// to this many days after it occurred (`crate::usage::LATE_USAGE_DAYS`), so a period's usage is
/// final this long after its end, and late facts found before then are billed on the next
/// invoice.
pub const LATE_USAGE_DAYS: i64 = crate::usage::LATE_USAGE_DAYS;

/// A plan version's terms as a subscription signed up to them: later catalog versions never
/// change what an existing subscriber pays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::PlanTerms))]
pub struct PlanTerms {
    /// Plan code.
    pub code: PlanCode,
    /// Catalog version.
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Price per month.
    pub monthly_price: Decimal,
    /// Price per year.
    pub yearly_price: Decimal,
    /// Limits.
    pub limits: PlanLimits,
    /// Usage charges of the plan version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<crate::billing::charges::Charge>,
}

impl PlanTerms {
    /// The terms of a catalog plan for a tenant billed in `currency`: that currency's prices.
    /// A plan not sold in it is refused (`currency`).
    pub fn in_currency(plan: &Plan, currency: &str) -> Result<Self, crate::ValidationError> {
        let prices = plan.prices_in(currency).ok_or_else(|| {
            let sold: Vec<String> = plan.sold_in().into_keys().collect();
            crate::ValidationError::new(
                "currency",
                format!("the plan \"{}\" is not sold in {currency} (it is sold in {})", plan.code, sold.join(", ")),
            )
        })?;
        Ok(Self { monthly_price: prices.monthly, yearly_price: prices.yearly, ..Self::of(plan) })
    }

    /// The terms of a catalog plan in its first currency.
    pub fn of(plan: &Plan) -> Self {
        Self {
            code: plan.code.clone(),
            version: plan.version,
            name: plan.name.clone(),
            monthly_price: plan.monthly_price,
            yearly_price: plan.yearly_price,
            limits: plan.limits.clone(),
            charges: plan.charges.clone(),
        }
    }

    /// The price of one period.
    pub fn price(&self, period: BillingPeriod) -> Decimal {
        match period {
            BillingPeriod::Monthly => self.monthly_price,
            BillingPeriod::Yearly => self.yearly_price,
        }
    }
}

/// Paid extras on top of the plan, billed in advance with each period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Addons))]
pub struct Addons {
    /// Users beyond the plan's.
    pub extra_users: u32,
    /// Storage beyond the plan's, in GB.
    pub extra_storage_gb: u32,
    /// Whether an invitation beyond the seats adds one (`extra_users` + 1, the rest of the
    /// period prorated on the next invoice) instead of being refused.
    #[serde(default)]
    pub auto_add_seats: bool,
}

/// Usage that is billed in arrears for one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BillableUsage {
    /// API calls made.
    pub api_calls: u64,
    /// SMS sent.
    pub sms: u64,
}

/// One metric's usage of a period as billed: how much was counted, what was included, and
/// what it cost. Late facts are billed as the difference to these figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::MeteredCharge))]
pub struct MeteredCharge {
    /// The plan's charge that priced it (`None`: the built-in API-call overage and SMS price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<crate::billing::charges::Charge>,
    /// The metric (`api_calls`, `sms`).
    pub metric: String,
    /// Units counted in the period (the metric's aggregate, rounded to its precision).
    #[serde(with = "crate::usage::quantity")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub quantity: Decimal,
    /// Units included in the plan for the period (`None`: no allowance, or unlimited for
    /// `api_calls`).
    pub included: Option<u64>,
    /// What the period's usage of the metric cost, in all.
    pub amount: Decimal,
}

/// A billed period whose usage can still change (see [`LATE_USAGE_DAYS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::BilledUsage))]
pub struct BilledUsage {
    /// The period's end.
    pub period_end: DateTime<Utc>,
    /// Per metric, as billed so far.
    pub charges: Vec<MeteredCharge>,
    /// When it was last billed.
    pub billed_at: DateTime<Utc>,
}

/// A grant of account credit (an admin's, or time carried from a downgrade, or a credit note
/// on a paid invoice): what is left of it, and until when it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::CreditGrant))]
pub struct CreditGrant {
    /// Its id.
    pub id: Uuid,
    /// What is left of it.
    pub remaining: Decimal,
    /// When it stops counting (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the subscription remembers of an invoice it issued, for credit notes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::InvoiceBook))]
pub struct InvoiceBook {
    /// The invoice's subtotal.
    pub subtotal: Decimal,
    /// The subtotals of its credit notes so far.
    pub credited: Decimal,
}

/// A redeemed coupon's discount, while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::ActiveDiscount))]
pub struct ActiveDiscount {
    /// The coupon as redeemed.
    pub coupon: crate::coupon::CouponTerms,
    /// Invoices it still applies to (`None`: forever).
    pub invoices_left: Option<u32>,
    /// When it was redeemed.
    pub applied_at: DateTime<Utc>,
}

/// A boxed future, for object-safe ports.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The port through which the aggregate learns a tenant's usage in a period (implemented by
/// the write side over the usage records).
pub trait UsageMeter: Send + Sync {
    /// Usage of `tenant_id` in `[period.start, period.end)`.
    fn billable_usage(&self, tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>>;
    /// Usage of `metrics` by `tenant_id` in the period: each metric's aggregate (`sum`, `max`,
    /// `last`, `unique_count`, as its definition says), rounded once to its precision; a metric
    /// without facts is absent.
    fn metered(
        &self,
        _tenant_id: Uuid,
        _period: Period,
        _metrics: Vec<String>,
    ) -> BoxFuture<'_, Result<BTreeMap<String, Decimal>, String>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
    /// [`Self::billable_usage`] and [`Self::metered`] (of `metrics`) for each of `periods`, in
    /// their order: what a renewal reads (the period that closed and every period still open to
    /// late usage), in one read where the meter can. The default asks period by period.
    fn readings(&self, tenant_id: Uuid, periods: Vec<Period>, metrics: Vec<String>) -> BoxFuture<'_, Result<Vec<Reading>, String>> {
        Box::pin(async move {
            let mut readings = Vec::with_capacity(periods.len());
            for period in periods {
                let usage = self.billable_usage(tenant_id, period).await?;
                let metered = if metrics.is_empty() { BTreeMap::new() } else { self.metered(tenant_id, period, metrics.clone()).await? };
                readings.push(Reading { period, usage, metered });
            }
            Ok(readings)
        })
    }
}

/// A tenant's usage in one period, as [`UsageMeter::readings`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The period.
    pub period: Period,
    /// The built-in billable usage ([`UsageMeter::billable_usage`]).
    pub usage: BillableUsage,
    /// The metrics asked for, as [`UsageMeter::metered`] answers them.
    pub metered: BTreeMap<String, Decimal>,
}

/// A meter that answers from readings taken at once and asks `inner` for anything else.
pub(crate) struct Prefetched<'a> {
    inner: &'a dyn UsageMeter,
    tenant_id: Uuid,
    metrics: Vec<String>,
    readings: Vec<Reading>,
}

impl<'a> Prefetched<'a> {
    /// `tenant_id`'s usage of `metrics` in `periods`, read at once through `inner`.
    pub(crate) async fn read(
        inner: &'a dyn UsageMeter,
        tenant_id: Uuid,
        periods: Vec<Period>,
        metrics: Vec<String>,
    ) -> Result<Self, String> {
        let readings = inner.readings(tenant_id, periods, metrics.clone()).await?;
        Ok(Self { inner, tenant_id, metrics, readings })
    }

    fn reading(&self, tenant_id: Uuid, period: Period) -> Option<&Reading> {
        (tenant_id == self.tenant_id).then(|| self.readings.iter().find(|r| r.period == period)).flatten()
    }
}

impl UsageMeter for Prefetched<'_> {
    fn billable_usage(&self, tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        match self.reading(tenant_id, period) {
            Some(reading) => {
                let usage = reading.usage;
                Box::pin(async move { Ok(usage) })
            }
            None => self.inner.billable_usage(tenant_id, period),
        }
    }

    fn metered(&self, tenant_id: Uuid, period: Period, metrics: Vec<String>) -> BoxFuture<'_, Result<BTreeMap<String, Decimal>, String>> {
        match self.reading(tenant_id, period).filter(|_| metrics.iter().all(|m| self.metrics.contains(m))) {
            Some(reading) => {
                let metered = reading.metered.iter().filter(|(m, _)| metrics.contains(m)).map(|(m, q)| (m.clone(), *q)).collect();
                Box::pin(async move { Ok(metered) })
            }
            None => self.inner.metered(tenant_id, period, metrics),
        }
    }
}

/// The aggregate's services.
pub type SubscriptionServices = Arc<dyn UsageMeter>;

/// Where a subscription is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::SubscriptionStatus))]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Not started.
    #[default]
    New,
    /// In its free trial.
    Trialing,
    /// Paying and in good standing.
    Active,
    /// A payment failed; the grace period runs.
    PastDue,
    /// The grace period expired unpaid.
    Suspended,
    /// Ended.
    Cancelled,
}

impl SubscriptionStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Suspended => "suspended",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A plan change waiting for the period end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::PendingChange))]
pub struct PendingChange {
    /// The plan to switch to.
    pub plan: PlanTerms,
    /// Its billing period.
    pub billing_period: BillingPeriod,
    /// When.
    pub effective_at: DateTime<Utc>,
}

/// The version of what [`Subscription`]'s state means, for snapshots of it
/// (`commands::snapshots`): bump it whenever `apply` would now give another state for the same
/// events (a fix in an event's effect, a field derived from old events), so that states taken by
/// the old code are ignored and rebuilt from the log.
pub const STATE_VERSION: i32 = 1;

/// The Subscription aggregate's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Subscription))]
pub struct Subscription {
    /// Its id.
    pub id: Option<Uuid>,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// The tenant's code (invoice numbers).
    pub tenant_code: String,
    /// Invoice currency.
    pub currency: String,
    /// Tax rate.
    pub tax_rate: TaxRate,
    /// Status.
    pub status: SubscriptionStatus,
    /// Current plan terms.
    pub plan: Option<PlanTerms>,
    /// Current billing period kind.
    pub billing_period: Option<BillingPeriod>,
    /// When the subscription started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the trial ends (or ended).
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// The billing anchor (trial end, or start without trial, or the last interval switch).
    pub anchor: Option<DateTime<Utc>>,
    /// Which period after the anchor is current.
    pub period_index: u32,
    /// Whether it ends at the current period's end.
    pub cancel_at_period_end: bool,
    /// A downgrade waiting for the period end.
    pub pending_change: Option<PendingChange>,
    /// Add-ons.
    pub addons: Addons,
    /// Invoices issued so far (the next number is this + 1).
    pub invoices_issued: u32,
    /// Unpaid invoices and their totals.
    pub unpaid: BTreeMap<Uuid, Decimal>,
    /// Unpaid invoices whose payment failed.
    pub failed: BTreeSet<Uuid>,
    /// Since when a payment has been overdue.
    pub past_due_since: Option<DateTime<Utc>>,
    /// Payment notifications already processed (by provider id) for the invoices still unpaid
    /// (a notification for an invoice no longer unpaid changes nothing anyway), so this stays
    /// as small as `unpaid`.
    #[serde(default)]
    pub payments_pending: BTreeMap<Uuid, BTreeSet<String>>,
    /// Account credit to apply to the next invoices: the sum of `credits` (expired grants still
    /// count here until the billing run records their expiry; see [`Subscription::available_credit`]).
    pub credit_balance: Decimal,
    /// The grants that make up the credit balance.
    #[serde(default)]
    pub credits: Vec<CreditGrant>,
    /// The invoices issued, for credit notes: the one part of the state that grows with every
    /// period. Complete only in a state loaded for a command that
    /// [decides on history](SubscriptionCommand::decides_on_history); a [compact](Self::compact)
    /// state has none, and a state folded on a compact one only the invoices issued since.
    #[serde(default)]
    pub invoice_books: BTreeMap<Uuid, InvoiceBook>,
    /// Credit notes issued so far (the next number is this + 1).
    #[serde(default)]
    pub credit_notes_issued: u32,
    /// A coupon's discount on the next invoices.
    #[serde(default)]
    pub discount: Option<ActiveDiscount>,
    /// Charges waiting for the next invoice (seats added during a period).
    #[serde(default)]
    pub pending_lines: Vec<crate::billing::invoice::InvoiceLine>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Billed periods whose usage can still change, by start: late facts in them are billed on
    /// the next invoice. Dropped from an invoice issued once their window has closed.
    #[serde(default)]
    pub usage_billed: BTreeMap<DateTime<Utc>, BilledUsage>,
    /// Days after issue an invoice is due.
    #[serde(default)]
    pub net_terms_days: u32,
    /// Voided invoices.
    #[serde(default)]
    pub voided: BTreeSet<Uuid>,
    /// The last day of the grace period a payment reminder went out for (0: none yet).
    #[serde(default)]
    pub reminded_day: u32,
}

impl Subscription {
    /// The current period: the trial while trialing, else the anchor's current period.
    pub fn current_period(&self) -> Option<Period> {
        match self.status {
            SubscriptionStatus::New => None,
            SubscriptionStatus::Trialing => Some(Period { start: self.started_at?, end: self.trial_ends_at? }),
            _ => Some(period::nth(self.anchor?, self.billing_period?, self.period_index)),
        }
    }

    /// When the billing run next has something to do for this subscription (trial end,
    /// renewal, grace expiry), if ever.
    pub fn next_due_at(&self) -> Option<DateTime<Utc>> {
        rules::next_due(self).map(|(at, _)| at)
    }

    /// The state without the part that grows with every period: the books of issued invoices,
    /// which only a credit note decides on ([`SubscriptionCommand::decides_on_history`]). What
    /// snapshots and read models keep (`rm.subscriptions`), so that they stay the same size
    /// however long the subscription lives; every other command decides the same on it as on
    /// the full state.
    pub fn compact(&self) -> Self {
        Self { invoice_books: BTreeMap::new(), ..self.clone() }
    }

    /// The seats the plan and the add-ons allow (`None`: unlimited).
    pub fn seat_limit(&self) -> Option<u64> {
        let users = self.plan.as_ref()?.limits.users?;
        Some(users + u64::from(self.addons.extra_users))
    }

    /// The credit that counts at `at`: grants not expired by then.
    pub fn available_credit(&self, at: DateTime<Utc>) -> Decimal {
        self.credits.iter().filter(|g| g.expires_at.is_none_or(|e| e > at)).map(|g| g.remaining).sum()
    }

    /// The end of the period of the last invoice the discount applies to, if renewals go on as
    /// they are (`None`: forever, or no discount).
    pub fn discount_ends_at_period(&self) -> Option<DateTime<Utc>> {
        let left = self.discount.as_ref()?.invoices_left?;
        let (anchor, kind) = (self.anchor?, self.billing_period?);
        let last = match self.status {
            SubscriptionStatus::Trialing => left.checked_sub(1)?,
            _ => self.period_index + left,
        };
        Some(period::nth(anchor, kind, last).end)
    }

    /// The instant the grace period of an overdue payment runs out.
    pub fn grace_expires_at(&self) -> Option<DateTime<Utc>> {
        match self.status {
            SubscriptionStatus::PastDue => self.past_due_since.map(|t| t + Duration::days(GRACE_DAYS)),
            _ => None,
        }
    }
}

impl Aggregate for Subscription {
    const TYPE: &'static str = "Subscription";
    type Command = SubscriptionCommand;
    type Event = SubscriptionEvent;
    type Error = SubscriptionError;
    type Services = SubscriptionServices;

    async fn handle(&mut self, command: Self::Command, meter: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        rules::handle(self, command, meter.as_ref(), sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        events::apply(self, event);
    }
}

#[cfg(test)]
mod tests;
