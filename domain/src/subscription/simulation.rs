//! Price simulation: one subscription's real history re-run under a candidate catalog.
//!
//! The log keeps, for every commit, the events a subscription command produced and (in the
//! metadata) the command's name. From them the simulation rebuilds the commands that were
//! really issued, in their order and at their instants, puts the candidate plan terms where a
//! command named a plan, and runs them through the aggregate's own `handle` on a fresh state,
//! with a usage meter that answers what the live meter answered at that point of the log (the
//! usage facts recorded before the commit). The invoices that come out are the simulated ones;
//! the real `InvoiceIssued` events are the actual ones. Nothing here does I/O: the caller reads
//! the log and the usage facts and hands them in.
//!
//! What really happened is kept: payments pay (or fail on) the same invoice by number, whatever
//! its simulated total; a plan change applies at the same instant (`immediately` as it really
//! did); a command the simulated state refuses is skipped and reported.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::{
    BillableUsage, BoxFuture, PaymentOutcome, PlanTerms, StartSubscription, Subscription, SubscriptionCommand as C, SubscriptionEvent as E,
    UsageMeter,
};
use crate::billing::period::Period;
use crate::plan::Plan;
use crate::usage::metrics::{MetricDefinition, Tally};

/// One stored event of the subscription, with what its commit's metadata says.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// The event.
    pub event: E,
    /// Its position in the global log.
    pub position: i64,
    /// The commit it belongs to: events of one commit share it (the metadata as stored).
    pub commit: String,
    /// The command's name (`advance_to`, `change_plan`, ...), when the metadata records it.
    pub command: Option<String>,
    /// The command's instant (the metadata's `occurred_at`).
    pub at: Option<DateTime<Utc>>,
}

/// One usage fact as billing reads it, with its corrections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFact {
    /// The metric.
    pub metric: String,
    /// The quantity as recorded.
    pub quantity: Decimal,
    /// The value as recorded (a `unique_count` fact).
    pub value: Option<String>,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Its position in the log (when it was recorded).
    pub position: i64,
    /// Its place in its batch (1 for a fact on its own).
    pub item: i32,
    /// Its corrections in log order: from each position on, its quantity and value (`None`:
    /// void).
    pub corrections: Vec<(i64, Option<Counted>)>,
}

/// What a fact counts: its quantity and value.
pub type Counted = (Decimal, Option<String>);

impl UsageFact {
    /// The fact as the log held it before position `before`: `None` if not yet recorded or void.
    pub fn as_of(&self, before: i64) -> Option<(Decimal, Option<&str>)> {
        if self.position >= before {
            return None;
        }
        let mut state = Some((self.quantity, self.value.as_deref()));
        for (position, correction) in &self.corrections {
            if *position < before {
                state = correction.as_ref().map(|(q, v)| (*q, v.as_deref()));
            }
        }
        state
    }
}

/// The candidate catalog: by plan code, the plan that stands for every version of it.
#[derive(Debug, Clone, Default)]
pub struct CandidateCatalog {
    plans: BTreeMap<String, Plan>,
    metrics: BTreeMap<String, MetricDefinition>,
}

impl CandidateCatalog {
    /// A catalog of `plans` (a later plan with the same code wins).
    pub fn new(plans: impl IntoIterator<Item = Plan>) -> Self {
        Self { plans: plans.into_iter().map(|p| (p.code.to_string(), p)).collect(), metrics: BTreeMap::new() }
    }

    /// With the billable metrics' definitions (those of the real catalog: usage is aggregated
    /// as billing aggregates it).
    pub fn with_metrics(mut self, metrics: impl IntoIterator<Item = MetricDefinition>) -> Self {
        self.metrics = metrics.into_iter().map(|m| (m.code.to_string(), m)).collect();
        self
    }

    /// Metric `code`'s definition (a built-in's or an undefined plan metric's implicit one).
    pub fn metric(&self, code: &str) -> MetricDefinition {
        match self.metrics.get(code) {
            Some(m) => m.clone(),
            None => MetricDefinition::implicit(code),
        }
    }

    /// The candidate plan with `code`, if the catalog has one.
    pub fn plan(&self, code: &str) -> Option<&Plan> {
        self.plans.get(code)
    }

    /// The terms a subscriber in `currency` would have had instead of `real`: the candidate's
    /// (keeping the real version number, so a change between versions stays a change), or the
    /// real ones when the candidate does not name the plan.
    /// A candidate not sold in the subscriber's currency leaves the real terms, and says so.
    pub fn terms(&self, real: &PlanTerms, currency: &str) -> (PlanTerms, Option<String>) {
        match self.plans.get(real.code.as_str()) {
            None => (real.clone(), None),
            Some(plan) => match PlanTerms::in_currency(plan, currency) {
                Ok(terms) => (PlanTerms { version: real.version, ..terms }, None),
                Err(e) => (real.clone(), Some(format!("{}; the real price was kept", e.message))),
            },
        }
    }
}

/// An invoice of the history, real or simulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedInvoice {
    /// Its number.
    pub number: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// Its subtotal.
    pub subtotal: Decimal,
    /// The subscription's plan code after the commit that issued it.
    pub plan: String,
}

/// One subscription's history, real and simulated.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// The subscription.
    pub subscription_id: Option<Uuid>,
    /// Its tenant.
    pub tenant_id: Option<Uuid>,
    /// The tenant's code.
    pub tenant_code: String,
    /// The invoices really issued.
    pub actual: Vec<IssuedInvoice>,
    /// The invoices the candidate catalog issues.
    pub simulated: Vec<IssuedInvoice>,
    /// The plan code from each instant on, as simulated (for limits).
    pub plans: Vec<(DateTime<Utc>, String)>,
    /// Extra users (add-ons) from each instant on, as simulated.
    pub extra_users: Vec<(DateTime<Utc>, u32)>,
    /// Commands the simulated state refused (skipped), with why.
    pub refused: Vec<String>,
}

/// The usage meter of a replay: the facts recorded before position `before`, as the live
/// meter (`rm.usage_records`) saw them then, aggregated by each metric's definition.
struct ReplayMeter {
    facts: Arc<[UsageFact]>,
    before: i64,
    metrics: BTreeMap<String, MetricDefinition>,
}

impl ReplayMeter {
    fn seen(&self, period: Period) -> impl Iterator<Item = (&UsageFact, Decimal, Option<&str>)> {
        self.facts.iter().filter(move |f| f.occurred_at >= period.start && f.occurred_at < period.end).filter_map(move |f| {
            let (quantity, value) = f.as_of(self.before)?;
            Some((f, quantity, value))
        })
    }
}

impl UsageMeter for ReplayMeter {
    fn billable_usage(&self, _tenant_id: Uuid, period: Period) -> BoxFuture<'_, Result<BillableUsage, String>> {
        let (mut api_calls, mut sms) = (Decimal::ZERO, Decimal::ZERO);
        for (fact, quantity, _) in self.seen(period) {
            match fact.metric.as_str() {
                "api_calls" => api_calls += quantity,
                "sms" => sms += quantity,
                _ => {}
            }
        }
        let whole = |d: Decimal| d.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero).to_u64().unwrap_or(0);
        Box::pin(async move { Ok(BillableUsage { api_calls: whole(api_calls), sms: whole(sms) }) })
    }

    fn metered(&self, _tenant_id: Uuid, period: Period, metrics: Vec<String>) -> BoxFuture<'_, Result<BTreeMap<String, Decimal>, String>> {
        // Each metric's tally (a batch's facts share its position and follow its order), then
        // its definition's figure.
        let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
        for (fact, quantity, value) in self.seen(period).filter(|(f, _, _)| metrics.contains(&f.metric)) {
            tallies.entry(fact.metric.as_str()).or_default().add(fact.occurred_at, fact.position, fact.item, quantity, value);
        }
        let answer = tallies
            .into_iter()
            .map(|(metric, tally)| {
                let definition = match self.metrics.get(metric) {
                    Some(m) => m.clone(),
                    None => MetricDefinition::implicit(metric),
                };
                (metric.to_owned(), definition.figure(&tally))
            })
            .collect();
        Box::pin(async move { Ok(answer) })
    }
}

/// Re-runs one subscription's `events` (its whole stream, in order) under `catalog`, with its
/// tenant's usage `facts`. Invoices are collected whatever their date; the caller picks the
/// window.
pub async fn replay(events: Vec<RecordedEvent>, facts: Arc<[UsageFact]>, catalog: &CandidateCatalog) -> Replayed {
    let mut out = Replayed::default();
    let mut real = Subscription::default();
    let mut sim = Subscription::default();
    let mut index = 0;
    while index < events.len() {
        let end = index + events[index..].iter().take_while(|e| e.commit == events[index].commit).count();
        let group = &events[index..end];
        index = end;
        let commands = commands_of(group, &real, &sim, catalog, &mut out.refused);
        // The real state after the commit, and its invoices.
        for recorded in group {
            if let E::InvoiceIssued { number, issued_at, subtotal, .. } = &recorded.event {
                let plan = plan_after(&real, group);
                out.actual.push(IssuedInvoice { number: number.clone(), issued_at: *issued_at, subtotal: *subtotal, plan });
            }
            if let E::SubscriptionStarted { subscription_id, tenant_id, tenant_code, .. } = &recorded.event {
                out.subscription_id = Some(*subscription_id);
                out.tenant_id = Some(*tenant_id);
                out.tenant_code.clone_from(tenant_code);
            }
            real.apply(recorded.event.clone());
        }
        let meter: Arc<dyn UsageMeter> =
            Arc::new(ReplayMeter { facts: facts.clone(), before: group[0].position, metrics: catalog.metrics.clone() });
        for command in commands {
            let command = match command {
                Ok(command) => command,
                Err(why) => {
                    out.refused.push(why);
                    continue;
                }
            };
            let name = command.name();
            let sink = EventSink::default();
            let mut next = sim.clone();
            if let Err(e) = next.handle(command, &meter, &sink).await {
                out.refused.push(format!("{name} at position {}: {e}", group[0].position));
                continue;
            }
            sim = next;
            let plan = sim.plan.as_ref().map(|p| p.code.to_string()).unwrap_or_default();
            for event in sink.collect().await {
                if let E::InvoiceIssued { number, issued_at, subtotal, .. } = event {
                    out.simulated.push(IssuedInvoice { number, issued_at, subtotal, plan: plan.clone() });
                }
            }
        }
        let at = group_at(group);
        let plan = sim.plan.as_ref().map(|p| p.code.to_string()).unwrap_or_default();
        if out.plans.last().is_none_or(|(_, last)| *last != plan) {
            out.plans.push((at, plan));
        }
        if out.extra_users.last().is_none_or(|(_, last)| *last != sim.addons.extra_users) {
            out.extra_users.push((at, sim.addons.extra_users));
        }
    }
    out
}

/// The plan code of `real` once `group` is applied (the state is still before it).
fn plan_after(real: &Subscription, group: &[RecordedEvent]) -> String {
    let changed = group.iter().rev().find_map(|r| match &r.event {
        E::SubscriptionStarted { plan, .. } | E::PlanChanged { plan, .. } => Some(plan.code.to_string()),
        _ => None,
    });
    changed.or_else(|| real.plan.as_ref().map(|p| p.code.to_string())).unwrap_or_default()
}

/// The latest instant a commit names: its command's instant, or any later one of its events.
fn group_at(group: &[RecordedEvent]) -> DateTime<Utc> {
    group.iter().filter_map(|r| r.at).chain(group.iter().filter_map(|r| r.event.effective_at())).max().unwrap_or_default()
}

/// The name of the command a commit answered: as recorded, or (for commits from before the
/// metadata named it) as its events show it.
fn command_name(group: &[RecordedEvent], real: &Subscription) -> &'static str {
    if let Some(name) = group[0].command.as_deref() {
        for known in [
            "start",
            "change_plan",
            "cancel",
            "resume",
            "set_addons",
            "advance_to",
            "void_invoice",
            "set_net_terms",
            "grant_credit",
            "issue_credit_note",
            "add_seat",
            "apply_coupon",
            "remove_coupon",
            "record_payment",
        ] {
            if name == known {
                return known;
            }
        }
    }
    let has = |f: &dyn Fn(&E) -> bool| group.iter().any(|r| f(&r.event));
    match &group[0].event {
        E::SubscriptionStarted { .. } => "start",
        E::PlanChangeScheduled { .. } | E::ScheduledPlanChangeDropped { .. } | E::PlanChanged { .. } => "change_plan",
        E::CancellationScheduled { .. } => "cancel",
        E::CancellationWithdrawn { .. } => "resume",
        E::AddonsChanged { .. } => "set_addons",
        E::InvoiceVoided { .. } => "void_invoice",
        E::NetTermsChanged { .. } => "set_net_terms",
        E::CreditGranted { .. } => "grant_credit",
        E::CreditNoteIssued { .. } => "issue_credit_note",
        E::SeatAdded { .. } => "add_seat",
        E::CouponApplied { .. } => "apply_coupon",
        E::CouponRemoved { .. } => "remove_coupon",
        E::PaymentFailed { .. } | E::PaymentSucceeded { .. } => "record_payment",
        _ if has(&|e| matches!(e, E::SubscriptionCancelled { immediately: true, .. })) => "cancel",
        // An interval switch bills the usage so far and restarts the periods at once; a
        // scheduled change applied by the billing run follows a pending change.
        _ if real.pending_change.is_none() && has(&|e| matches!(e, E::PlanChanged { new_anchor: Some(_), .. })) => "change_plan",
        _ => "advance_to",
    }
}

/// The commands a commit answered, rebuilt from its events, with the candidate's terms.
fn commands_of(
    group: &[RecordedEvent],
    real: &Subscription,
    sim: &Subscription,
    catalog: &CandidateCatalog,
    notes: &mut Vec<String>,
) -> Vec<Result<C, String>> {
    let first = &group[0];
    let at = first.at.unwrap_or_else(|| group_at(group));
    let currency = if sim.currency.is_empty() { real.currency.clone() } else { sim.currency.clone() };
    let position = first.position;
    let mut terms = |real_terms: &PlanTerms, currency: &str| -> Result<PlanTerms, String> {
        let (terms, note) = catalog.terms(real_terms, currency);
        if let Some(note) = note {
            notes.push(format!("position {position}: {note}"));
        }
        Ok(terms)
    };
    let find = |f: &dyn Fn(&E) -> bool| group.iter().map(|r| &r.event).find(|e| f(e));
    let one = |command: Result<C, String>| vec![command];
    match command_name(group, real) {
        "start" => {
            let Some(E::SubscriptionStarted {
                subscription_id,
                tenant_id,
                tenant_code,
                currency,
                tax_rate,
                plan,
                billing_period,
                trial_ends_at,
                started_at,
                net_terms_days,
                ..
            }) = find(&|e| matches!(e, E::SubscriptionStarted { .. }))
            else {
                return Vec::new();
            };
            let trial_days = trial_ends_at.map_or(0, |end| (end - *started_at).num_days().max(0) as u32);
            one(terms(plan, currency).map(|plan| {
                C::Start(Box::new(StartSubscription {
                    subscription_id: *subscription_id,
                    tenant_id: *tenant_id,
                    tenant_code: tenant_code.clone(),
                    currency: currency.clone(),
                    tax_rate: *tax_rate,
                    plan,
                    billing_period: *billing_period,
                    trial_days,
                    net_terms_days: *net_terms_days,
                    at: *started_at,
                }))
            }))
        }
        "change_plan" => {
            let change =
                find(&|e| matches!(e, E::PlanChanged { .. } | E::PlanChangeScheduled { .. } | E::ScheduledPlanChangeDropped { .. }));
            match change {
                Some(E::PlanChanged { plan, billing_period, effective_at, .. }) => one(terms(plan, &currency).map(|plan| C::ChangePlan {
                    plan,
                    billing_period: Some(*billing_period),
                    immediately: true,
                    at: *effective_at,
                })),
                Some(E::PlanChangeScheduled { plan, billing_period, .. }) => one(terms(plan, &currency).map(|plan| C::ChangePlan {
                    plan,
                    billing_period: Some(*billing_period),
                    immediately: false,
                    at,
                })),
                Some(E::ScheduledPlanChangeDropped { at }) => {
                    // Back to the plan the subscription is on.
                    one(sim
                        .plan
                        .clone()
                        .ok_or_else(|| format!("change_plan at position {position}: not started"))
                        .map(|plan| C::ChangePlan { plan, billing_period: sim.billing_period, immediately: false, at: *at }))
                }
                _ => Vec::new(),
            }
        }
        "cancel" => match find(&|e| matches!(e, E::SubscriptionCancelled { .. } | E::CancellationScheduled { .. })) {
            Some(E::SubscriptionCancelled { cancelled_at, .. }) => one(Ok(C::Cancel { at_period_end: false, at: *cancelled_at })),
            Some(E::CancellationScheduled { .. }) => one(Ok(C::Cancel { at_period_end: true, at })),
            _ => Vec::new(),
        },
        "resume" => one(Ok(C::Resume { at: first.event.effective_at().unwrap_or(at) })),
        "set_addons" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::AddonsChanged { addons, at } => Some(Ok(C::SetAddons { addons: *addons, at: *at })),
                _ => None,
            })
            .collect(),
        "advance_to" => one(Ok(C::AdvanceTo { as_of: group_at(group) })),
        "void_invoice" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::InvoiceVoided { invoice_id, voided_at } => Some(Ok(C::VoidInvoice { invoice_id: *invoice_id, at: *voided_at })),
                _ => None,
            })
            .collect(),
        "set_net_terms" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::NetTermsChanged { net_terms_days, at } => Some(Ok(C::SetNetTerms { net_terms_days: *net_terms_days, at: *at })),
                _ => None,
            })
            .collect(),
        "grant_credit" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::CreditGranted { grant_id, amount, reason, expires_at, at } => Some(Ok(C::GrantCredit {
                    grant_id: *grant_id,
                    amount: *amount,
                    reason: reason.clone(),
                    expires_at: *expires_at,
                    at: *at,
                })),
                _ => None,
            })
            .collect(),
        "issue_credit_note" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::CreditNoteIssued { invoice_id, subtotal, reason, created_at, .. } => {
                    // As much as was really credited, at most what the simulated invoice leaves.
                    let left = sim.invoice_books.get(invoice_id).map_or(Decimal::ZERO, |b| b.subtotal - b.credited);
                    let amount = (*subtotal).min(left);
                    Some(if amount > Decimal::ZERO {
                        Ok(C::IssueCreditNote { invoice_id: *invoice_id, amount, reason: reason.clone(), at: *created_at })
                    } else {
                        Err(format!("issue_credit_note at position {position}: nothing left to credit on the simulated invoice"))
                    })
                }
                _ => None,
            })
            .collect(),
        "add_seat" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::SeatAdded { at, .. } => Some(Ok(C::AddSeat { at: *at })),
                _ => None,
            })
            .collect(),
        "apply_coupon" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::CouponApplied { coupon, at } => Some(Ok(C::ApplyCoupon { coupon: coupon.clone(), at: *at })),
                _ => None,
            })
            .collect(),
        "remove_coupon" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::CouponRemoved { at, .. } => Some(Ok(C::RemoveCoupon { at: *at })),
                _ => None,
            })
            .collect(),
        "record_payment" => group
            .iter()
            .filter_map(|r| match &r.event {
                E::PaymentFailed { payment_id, invoice_id, failed_at } => Some(Ok(C::RecordPayment {
                    payment_id: payment_id.clone(),
                    invoice_id: *invoice_id,
                    outcome: PaymentOutcome::Failed,
                    at: *failed_at,
                })),
                E::PaymentSucceeded { payment_id, invoice_id, paid_at, method, reference, .. } => {
                    // The same invoice paid in full, whatever the candidate made its total.
                    let Some(&amount) = sim.unpaid.get(invoice_id) else {
                        return Some(Err(format!("record_payment at position {position}: the simulated invoice is not open")));
                    };
                    let offline = method.clone().map(|m| (m, reference.clone()));
                    Some(Ok(C::RecordPayment {
                        payment_id: payment_id.clone(),
                        invoice_id: *invoice_id,
                        outcome: PaymentOutcome::Succeeded { amount, currency: currency.clone(), offline },
                        at: *paid_at,
                    }))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
