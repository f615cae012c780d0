//! One line for people per event (`TenantCreated acme-clinic on starter`), read from the stored
//! payload as text without building a JSON tree.

use super::*;

/// The payload fields that summaries name (any event's; others are skipped unread).
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Fields<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    plan: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
    #[serde(borrow)]
    key_prefix: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    key_id: Option<&'a RawValue>,
    #[serde(borrow)]
    billing_period: Option<&'a RawValue>,
    #[serde(borrow)]
    period_start: Option<&'a RawValue>,
    #[serde(borrow)]
    period_end: Option<&'a RawValue>,
    #[serde(borrow)]
    number: Option<&'a RawValue>,
    #[serde(borrow)]
    total: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    effective_at: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    invoice_id: Option<&'a RawValue>,
    #[serde(borrow)]
    seats: Option<&'a RawValue>,
    #[serde(borrow)]
    starts_at: Option<&'a RawValue>,
    #[serde(borrow)]
    ends_at: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    capacity: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    metric: Option<&'a RawValue>,
    #[serde(borrow)]
    facts: Option<&'a RawValue>,
    #[serde(borrow)]
    month: Option<&'a RawValue>,
    #[serde(borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// A plan as events embed it.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct PlanFields<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
}

/// The metadata fields an entry copies.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Meta<'a> {
    #[serde(borrow)]
    pub(super) actor: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) correlation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) causation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) occurred_at: Option<&'a RawValue>,
}

/// A field's string value; empty if absent or not a string.
pub(super) fn text(v: Option<&RawValue>) -> String {
    v.filter(|r| r.get().starts_with('"')).and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default()
}

/// A field's JSON as written (`null` if absent), for numbers.
pub(super) fn shown(v: Option<&RawValue>) -> &str {
    v.map_or("null", RawValue::get)
}

/// A quantity: a whole one is a JSON number, a decimal one a string (`"2.5"`), shown bare.
pub(super) fn quantity(v: Option<&RawValue>) -> String {
    match v {
        Some(r) if r.get().starts_with('"') => text(v),
        _ => shown(v).to_owned(),
    }
}

/// A one-line, human summary of an event, from its type and its payload's JSON text.
pub fn summary_of(event_type: &str, aggregate_type: &str, aggregate_id: &str, payload: &str) -> String {
    let p: Fields<'_> = serde_json::from_str(payload).unwrap_or_default();
    let plan: PlanFields<'_> =
        p.plan.filter(|r| r.get().starts_with('{')).and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default();
    match event_type {
        "TenantCreated" => format!("tenant {} ({}) signed up on plan {}", text(p.code), text(p.name), text(p.plan)),
        "TenantSuspended" => format!("tenant suspended: {}", text(p.reason)),
        "TenantReactivated" => "tenant reactivated".to_owned(),
        "TenantCancelled" => format!("tenant cancelled: {}", text(p.reason)),
        "TenantErased" => "tenant's personal data erased (key destroyed)".to_owned(),
        "BrandingUpdated" => "branding updated".to_owned(),
        "ApiKeyIssued" => format!("API key {} issued with role {}", text(p.key_prefix), text(p.role)),
        "ApiKeyRevoked" => format!("API key {} revoked", text(p.key_id)),
        "PlanPublished" => format!("plan {} version {} published", text(plan.code), shown(plan.version)),
        "SubscriptionStarted" => format!("subscription started on {} ({})", text(plan.code), text(p.billing_period)),
        "PeriodStarted" => format!("billing period {} – {} started", text(p.period_start), text(p.period_end)),
        "InvoiceIssued" => format!("invoice {} issued: {} {}", text(p.number), text(p.total), text(p.currency)),
        "PlanChanged" => format!("plan changed to {}", text(plan.code)),
        "PlanChangeScheduled" => format!("change to plan {} scheduled for {}", text(plan.code), text(p.effective_at)),
        "PaymentSucceeded" => format!("payment of {} received for invoice {}", text(p.amount), text(p.invoice_id)),
        "PaymentFailed" => format!("payment failed for invoice {}", text(p.invoice_id)),
        "BookingConfirmed" => format!("booking of {} seat(s) confirmed {} – {}", shown(p.seats), text(p.starts_at), text(p.ends_at)),
        "BookingRescheduled" => format!("booking moved to {} – {}", text(p.starts_at), text(p.ends_at)),
        "BookingCancelled" => format!("booking cancelled: {}", text(p.reason)),
        "ResourceCreated" => format!("{} \"{}\" created (capacity {})", text(p.kind), text(p.name), shown(p.capacity)),
        "UsageRecorded" => format!("{} {} recorded", quantity(p.quantity), text(p.metric)),
        "UsageBatchRecorded" => batch_summary(p.facts),
        "UsageVoided" => format!("usage fact {} voided: {}", text(p.idempotency_key), text(p.reason)),
        "UsageAmended" => format!("usage fact {} amended to {}: {}", text(p.idempotency_key), quantity(p.quantity), text(p.reason)),
        "MonthClosed" => format!("revenue month {} closed", text(p.month)),
        "MonthReopened" => format!("revenue month {} reopened: {}", text(p.month), text(p.reason)),
        other => format!("{other} on {aggregate_type} {aggregate_id}"),
    }
}

/// "1000 usage facts recorded in a batch: 990 api_calls, 10 sms" (the facts per metric,
/// metrics by name).
pub(super) fn batch_summary(facts: Option<&RawValue>) -> String {
    #[derive(Deserialize)]
    struct Fact<'a> {
        #[serde(borrow)]
        metric: std::borrow::Cow<'a, str>,
    }
    let facts: Vec<Fact<'_>> = facts.and_then(|f| serde_json::from_str(f.get()).ok()).unwrap_or_default();
    let mut by_metric: BTreeMap<&str, usize> = BTreeMap::new();
    for fact in &facts {
        *by_metric.entry(&fact.metric).or_default() += 1;
    }
    let metrics: Vec<String> = by_metric.into_iter().map(|(metric, n)| format!("{n} {metric}")).collect();
    format!("{} usage facts recorded in a batch: {}", facts.len(), metrics.join(", "))
}

/// [`summary_of`] an event read through the log.
pub fn summary(e: &StoredEvent) -> String {
    summary_of(&e.event_type, &e.aggregate_type, &e.aggregate_id, &e.payload.to_string())
}
