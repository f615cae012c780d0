//! Named schemas of the answers that handlers build as JSON (`json!`), for the OpenAPI
//! document: each mirrors what its handler writes, and `tests/api/openapi.rs` checks real
//! answers against them, so a generated client gets types that hold.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use utoipa::ToSchema;
use uuid::Uuid;

/// Money: a decimal string with two places (`"29.00"`, `"-5.40"`).
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^-?[0-9]+\.[0-9]{2}$", example = "29.00")]
pub struct Money(String);

/// A decimal quantity as a string (`"1"`, `"12001"`, `"0.5"`).
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^-?[0-9]+(\.[0-9]+)?$", example = "3")]
pub struct Quantity(String);

/// What `POST /v1/tenants` answers.
#[derive(ToSchema)]
pub struct SignedUp {
    /// The tenant's id.
    id: Uuid,
    /// Its code.
    code: String,
    /// The owner API key (`slk_...`): shown this once.
    api_key: String,
    /// The key's id.
    api_key_id: Uuid,
    /// The subscription's id.
    subscription_id: Uuid,
    /// The tenant's status.
    #[schema(example = "active")]
    status: String,
}

/// What `POST /v1/usage` answers.
#[derive(ToSchema)]
pub struct UsageAccepted {
    /// Always `true`.
    accepted: bool,
    /// Whether the idempotency key was recorded before (then nothing was counted now).
    duplicate: bool,
}

/// One quota.
#[derive(ToSchema)]
pub struct Quota {
    /// The metric as the plan's limits name it (`api_calls_per_month`, `bookings_per_month`,
    /// `events`, `users`, `storage_mb`).
    metric: String,
    /// The limit; `null`: unlimited.
    #[schema(minimum = 0)]
    limit: Option<u64>,
    /// Used so far in the period.
    #[schema(minimum = 0)]
    used: u64,
    /// `limit - used`, never below 0; `null`: unlimited.
    #[schema(minimum = 0)]
    remaining: Option<u64>,
    /// `hard` (refused beyond the limit) or `metered` (billed beyond it).
    #[schema(pattern = "^(hard|metered)$")]
    enforcement: String,
    /// Start of the period the usage counts in; `null` for standing counts (seats, events).
    period_start: Option<DateTime<Utc>>,
    /// End of that period.
    period_end: Option<DateTime<Utc>>,
}

/// An invoice line.
#[derive(ToSchema)]
pub struct InvoiceLine {
    /// `plan`, `proration`, `addon`, `overage`, `usage`, `discount` or `credit`.
    #[schema(pattern = "^(plan|proration|addon|overage|usage|discount|credit)$")]
    kind: String,
    /// For people.
    description: String,
    /// Units.
    quantity: Quantity,
    /// Price of one unit.
    unit_price: Quantity,
    /// `quantity × unit_price`, rounded half-up to the cent.
    amount: Money,
}

/// A credit note.
#[derive(ToSchema)]
pub struct CreditNote {
    /// Its id.
    id: Uuid,
    /// `CN-<CODE>-000001`.
    number: String,
    /// The invoice it credits.
    invoice_id: Uuid,
    /// Before tax.
    subtotal: Money,
    /// Tax.
    tax: Money,
    /// With tax.
    total: Money,
    /// Why.
    reason: String,
    /// When.
    created_at: DateTime<Utc>,
}

/// An issued invoice.
#[derive(ToSchema)]
pub struct Invoice {
    /// Its id.
    id: Uuid,
    /// `<CODE>-000001`, gap-free per tenant.
    number: String,
    /// Whose.
    tenant_id: Uuid,
    /// The period it bills.
    period_start: DateTime<Utc>,
    /// End of that period.
    period_end: DateTime<Utc>,
    /// ISO 4217.
    currency: String,
    /// `open`, `paid` or `void`.
    #[schema(pattern = "^(draft|open|paid|void)$")]
    status: String,
    /// The lines.
    lines: Vec<InvoiceLine>,
    /// Before tax.
    subtotal: Money,
    /// `subtotal × tax_rate / 100`, rounded.
    tax: Money,
    /// With tax.
    total: Money,
    /// Account credit applied.
    credit_applied: Money,
    /// What is left to pay.
    amount_due: Money,
    /// Credit notes against it.
    credit_notes: Vec<CreditNote>,
    /// Issued.
    issued_at: DateTime<Utc>,
    /// Due.
    due_at: DateTime<Utc>,
    /// Paid, if it was.
    paid_at: Option<DateTime<Utc>>,
    /// When its last payment failed, if one did.
    payment_failed_at: Option<DateTime<Utc>>,
}

/// A page of invoices, newest first.
#[derive(ToSchema)]
pub struct InvoicePage {
    /// The invoices.
    data: Vec<Invoice>,
    /// Whether more follow.
    has_more: bool,
    /// Pass as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// A tenant's subscription.
#[derive(ToSchema)]
pub struct SubscriptionView {
    /// Its id.
    id: Uuid,
    /// Whose.
    tenant_id: Uuid,
    /// The plan's code.
    plan: Option<String>,
    /// The plan's version it is on.
    plan_version: Option<u32>,
    /// `monthly` or `yearly`.
    billing_period: Option<String>,
    /// `trialing`, `active`, `past_due`, `suspended` or `cancelled`.
    #[schema(example = "active")]
    status: String,
    /// When the trial ends (or ended).
    trial_ends_at: Option<DateTime<Utc>>,
    /// The current period.
    current_period_start: Option<DateTime<Utc>>,
    /// End of the current period.
    current_period_end: Option<DateTime<Utc>>,
    /// Whether it ends with the current period.
    cancel_at_period_end: bool,
    /// When it was cancelled.
    cancelled_at: Option<DateTime<Utc>>,
    /// Add-ons.
    addons: Addons,
    /// A change that takes effect at the period's end.
    pending_change: Option<PendingChange>,
    /// Account credit.
    credit_balance: Money,
    /// The coupon's discount, while it lasts.
    discount: Option<Discount>,
    /// Since when a payment is overdue.
    past_due_since: Option<DateTime<Utc>>,
    /// In a command's answer only: the invoice the command issued at once (an upgrade's
    /// prorated invoice), when it issued one.
    invoice: Option<Invoice>,
}

/// A subscription's add-ons.
#[derive(ToSchema)]
pub struct Addons {
    /// Seats beyond the plan's users.
    extra_users: u32,
    /// Storage beyond the plan's, in GB.
    extra_storage_gb: u32,
    /// Whether an invitation beyond the seats adds one.
    auto_add_seats: bool,
}

/// A plan change waiting for the period's end.
#[derive(ToSchema)]
pub struct PendingChange {
    /// The plan.
    plan: String,
    /// Its version.
    plan_version: u32,
    /// `monthly` or `yearly`.
    billing_period: String,
    /// When it applies.
    effective_at: DateTime<Utc>,
}

/// A redeemed coupon's discount.
#[derive(ToSchema)]
pub struct Discount {
    /// The coupon's code.
    coupon: String,
    /// For people (`20 % off`).
    description: String,
    /// `once`, `repeating` or `forever`.
    #[schema(pattern = "^(once|repeating|forever)$")]
    duration: String,
    /// Invoices it still applies to (`null`: forever).
    invoices_left: Option<u32>,
    /// The start of the last period it discounts (`null`: forever).
    ends_at_period: Option<DateTime<Utc>>,
    /// When it was redeemed.
    applied_at: DateTime<Utc>,
}

/// A plan's limits; `null`: unlimited.
#[derive(ToSchema)]
pub struct Limits {
    /// Seats.
    users: Option<u64>,
    /// Bookings a month.
    bookings_per_month: Option<u64>,
    /// Event resources.
    events: Option<u64>,
    /// Seats per event.
    tickets_per_event: Option<u64>,
    /// Storage, in MB.
    storage_mb: Option<u64>,
    /// API calls a month (beyond: overage).
    api_calls_per_month: Option<u64>,
}

/// A plan's prices in one currency.
#[derive(ToSchema)]
pub struct Prices {
    /// A month.
    monthly: Money,
    /// A year.
    yearly: Money,
}

/// A plan (one version of it).
#[derive(ToSchema)]
pub struct PlanView {
    /// Its code.
    code: String,
    /// Its name.
    name: String,
    /// Its version.
    version: u32,
    /// The first currency's monthly price.
    monthly_price: Money,
    /// The first currency's yearly price.
    yearly_price: Money,
    /// The first currency (ISO 4217).
    currency: String,
    /// Prices by currency.
    prices: std::collections::BTreeMap<String, Prices>,
    /// Limits.
    limits: Limits,
    /// How the usage of metrics is priced (see the README's *Usage charges*).
    charges: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Features.
    features: Vec<String>,
    /// Requests a key may make per minute.
    rate_limit_per_minute: u32,
}

/// A coupon.
#[derive(ToSchema)]
pub struct CouponView {
    /// Its code.
    code: String,
    /// Percent off (one of `percent_off`, `amount_off`).
    percent_off: Option<f64>,
    /// Amount off, in `currency`.
    amount_off: Option<Money>,
    /// The currency of `amount_off`.
    currency: Option<String>,
    /// `once`, `repeating` or `forever`.
    #[schema(pattern = "^(once|repeating|forever)$")]
    duration: String,
    /// Invoices it discounts when `repeating`.
    duration_in_periods: Option<u32>,
    /// How many tenants may redeem it.
    max_redemptions: Option<u32>,
    /// How many did.
    times_redeemed: i64,
    /// Redeemable until.
    redeem_by: Option<DateTime<Utc>>,
    /// The plans it applies to (empty: all).
    plans: Vec<String>,
    /// Whether it can be redeemed now.
    valid: bool,
    /// Created.
    created_at: Option<DateTime<Utc>>,
}

/// A page of coupons.
#[derive(ToSchema)]
pub struct CouponPage {
    /// The coupons.
    data: Vec<CouponView>,
    /// Whether more follow.
    has_more: bool,
    /// Pass as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// An audit entry: one event, chained to the previous entry of its tenant.
#[derive(ToSchema)]
pub struct AuditEntry {
    /// The event's log position.
    position: i64,
    /// The tenant (the nil UUID for platform events).
    tenant_id: Uuid,
    /// When it happened (the command's clock).
    occurred_at: DateTime<Utc>,
    /// Who: `admin`, `api_key:<id>`, `system:<job>`, ...
    actor: String,
    /// The aggregate type.
    aggregate_type: String,
    /// The aggregate id.
    aggregate_id: String,
    /// The event type.
    event_type: String,
    /// One line for people.
    summary: String,
    /// The request that started it.
    correlation_id: String,
    /// What directly caused it.
    causation_id: String,
    /// SHA-256 (hex) of the stored event.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    event_digest: String,
    /// The previous entry's hash.
    prev_hash: String,
    /// SHA-256 (hex) over this entry and `prev_hash`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    hash: String,
}

/// A page of audit entries, in log order.
#[derive(ToSchema)]
pub struct AuditPage {
    /// The entries.
    data: Vec<AuditEntry>,
    /// Whether more follow.
    has_more: bool,
    /// Pass as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// What verifying the audit chains found.
#[derive(ToSchema)]
pub struct Verification {
    /// Whether every entry matches its event and its predecessor.
    valid: bool,
    /// Entries checked.
    checked: u64,
    /// The first position that does not match.
    first_bad_position: Option<i64>,
}

/// A credit grant and the balance after it.
#[derive(ToSchema)]
pub struct CreditGrant {
    /// The grant's id.
    id: Uuid,
    /// Granted.
    amount: Money,
    /// Why.
    reason: String,
    /// When what is left of it expires.
    expires_at: Option<DateTime<Utc>>,
    /// When.
    created_at: DateTime<Utc>,
    /// The tenant's available credit after it.
    balance: Money,
}

/// One movement of account credit.
#[derive(ToSchema)]
pub struct CreditTransaction {
    /// Positive: granted; negative: applied or expired.
    amount: Money,
    /// Why.
    reason: String,
    /// The invoice it was applied to.
    invoice_id: Option<Uuid>,
    /// When a grant expires.
    expires_at: Option<DateTime<Utc>>,
    /// When.
    created_at: DateTime<Utc>,
}

/// A tenant's account credit.
#[derive(ToSchema)]
pub struct CreditLedger {
    /// Available now.
    balance: Money,
    /// ISO 4217.
    currency: String,
    /// Oldest first.
    transactions: Vec<CreditTransaction>,
}

/// One bucket of usage.
#[derive(ToSchema)]
pub struct UsageBucket {
    /// The metric.
    metric: String,
    /// `counter` (summed) or `gauge` (the latest value).
    #[schema(pattern = "^(counter|gauge)$")]
    kind: String,
    /// The bucket's start (UTC).
    start: DateTime<Utc>,
    /// Its end (`GET /v1/usage` only).
    end: Option<DateTime<Utc>>,
    /// The sum, or the gauge's latest value.
    value: Quantity,
    /// Facts in the bucket.
    facts: i64,
}

/// Usage over time.
#[derive(ToSchema)]
pub struct UsageSeries {
    /// `hour`, `day` or `month`.
    #[schema(pattern = "^(hour|day|month)$")]
    granularity: String,
    /// From (inclusive).
    from: DateTime<Utc>,
    /// To (exclusive).
    to: DateTime<Utc>,
    /// By metric, then time.
    buckets: Vec<UsageBucket>,
}

/// The platform's revenue in one month (UTC).
#[derive(ToSchema)]
pub struct RevenueMonth {
    /// `YYYY-MM`.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}$", example = "2027-01")]
    month: String,
    /// Monthly recurring revenue at the month's end.
    mrr: Money,
    /// 12 × MRR.
    arr: Money,
    /// Paying tenants at the month's end.
    active_tenants: i64,
    /// Tenants that started paying in it.
    new_tenants: i64,
    /// Tenants that stopped paying in it.
    churned_tenants: i64,
    /// Churned ÷ paying at the month's start (4 places).
    churn_rate: f64,
    /// MRR by plan code.
    by_plan: std::collections::BTreeMap<String, Money>,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// `ok`.
    status: String,
    /// This instance's id.
    instance: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
pub struct Ready {
    /// `ready`.
    status: String,
}

/// `GET /`: where to start.
#[derive(ToSchema)]
pub struct Index {
    /// `saas-ledger`.
    name: String,
    /// The server's version.
    version: String,
    /// `/docs`.
    docs: String,
    /// `/openapi.json`.
    openapi: String,
    /// `/healthz`.
    health: String,
    /// `/readyz`.
    ready: String,
}

/// One projection run.
#[derive(ToSchema)]
pub struct ProjectionRun {
    /// The projection.
    name: String,
    /// The version the run builds.
    version: i32,
    /// The run's number within the projection.
    generation: i32,
    /// `building`, `live` or `retired`.
    #[schema(pattern = "^(building|live|retired)$")]
    status: String,
    /// The last position applied.
    position: i64,
    /// The log's head.
    head: i64,
    /// `head - position`.
    lag: i64,
    /// Why it is stuck, if it is.
    last_error: Option<String>,
    /// Where it is stuck.
    last_error_position: Option<i64>,
    /// The instance running it now.
    leader: Option<String>,
}

/// A rebuild started.
#[derive(ToSchema)]
pub struct RebuildStarted {
    /// The runs started.
    rebuilding: Vec<RebuildRun>,
}

/// A run a rebuild started.
#[derive(ToSchema)]
pub struct RebuildRun {
    /// The projection.
    name: String,
    /// The new run's number.
    generation: i32,
    /// `building`.
    status: String,
}

/// The test clock.
#[derive(ToSchema)]
pub struct Clock {
    /// The server's time now.
    now: DateTime<Utc>,
    /// What the billing cycle did up to it (`PUT` only).
    billing: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The invoice the next period start would issue (not stored: no id, no number).
#[derive(ToSchema)]
pub struct DraftInvoice {
    /// Whose.
    tenant_id: Uuid,
    /// The period it would bill.
    period_start: DateTime<Utc>,
    /// End of that period.
    period_end: DateTime<Utc>,
    /// ISO 4217.
    currency: String,
    /// `draft`.
    #[schema(pattern = "^draft$")]
    status: String,
    /// The lines.
    lines: Vec<InvoiceLine>,
    /// Before tax.
    subtotal: Money,
    /// Tax.
    tax: Money,
    /// With tax.
    total: Money,
    /// Credit it would apply.
    credit_applied: Money,
    /// What would be due.
    amount_due: Money,
    /// Always empty.
    credit_notes: Vec<CreditNote>,
    /// When it would be issued.
    issued_at: DateTime<Utc>,
    /// When it would be due.
    due_at: DateTime<Utc>,
}

/// The payment provider's notification, as processed.
#[derive(ToSchema)]
pub struct PaymentReceived {
    /// Always `true`.
    received: bool,
    /// The notification's id.
    id: String,
    /// Whether it was processed before (nothing was done now).
    duplicate: bool,
}

/// Actual, simulated and their difference.
#[derive(ToSchema)]
pub struct SimulationFigures {
    /// The sum of the subtotals of the invoices really issued in the window.
    actual: Money,
    /// The same sum under the candidate catalog.
    simulated: Money,
    /// `simulated - actual`.
    difference: Money,
}

/// One month of a simulation (by the invoices' issue date, UTC).
#[derive(ToSchema)]
pub struct SimulationMonth {
    /// `YYYY-MM`.
    #[schema(pattern = r"^[0-9]{4}-[0-9]{2}$")]
    month: String,
    /// Actual.
    actual: Money,
    /// Simulated.
    simulated: Money,
    /// Simulated − actual.
    difference: Money,
}

/// One plan of a simulation (the plan the tenant was on when the invoice was issued).
#[derive(ToSchema)]
pub struct SimulationPlan {
    /// The plan code.
    plan: String,
    /// Actual.
    actual: Money,
    /// Simulated.
    simulated: Money,
    /// Simulated − actual.
    difference: Money,
}

/// One tenant of a simulation.
#[derive(ToSchema)]
pub struct SimulationTenant {
    /// The tenant.
    tenant_id: Uuid,
    /// Its code.
    code: String,
    /// Actual.
    actual: Money,
    /// Simulated.
    simulated: Money,
    /// Simulated − actual.
    difference: Money,
}

/// Real facts that a candidate plan's lower limit would have refused (the simulation keeps
/// what really happened and reports them).
#[derive(ToSchema)]
pub struct SimulationOverLimit {
    /// The tenant.
    tenant_id: Uuid,
    /// Its code.
    code: String,
    /// `users` or `bookings_per_month`.
    metric: String,
    /// The candidate's limit (with the tenant's extra users, for `users`).
    limit: u64,
    /// What was really used: the most members at once, or the bookings created in the month.
    used: u64,
    /// The month, for `bookings_per_month`.
    #[schema(pattern = r"^[0-9]{4}-[0-9]{2}$")]
    month: Option<String>,
}

/// A real command the simulated history refused (skipped).
#[derive(ToSchema)]
pub struct SimulationRefusal {
    /// The tenant.
    tenant_id: Uuid,
    /// What and why.
    reason: String,
}

/// A simulation's result.
#[derive(ToSchema)]
pub struct SimulationResult {
    /// Over all tenants.
    totals: SimulationFigures,
    /// Per month.
    by_month: Vec<SimulationMonth>,
    /// Per plan.
    by_plan: Vec<SimulationPlan>,
    /// Per tenant with an invoice in the window.
    by_tenant: Vec<SimulationTenant>,
    /// Real facts beyond a candidate plan's seat or booking limit.
    over_limit: Vec<SimulationOverLimit>,
    /// Subscriptions re-billed.
    subscriptions: u64,
    /// Invoices really issued in the window.
    invoices_actual: u64,
    /// Invoices the candidate catalog issues in the window.
    invoices_simulated: u64,
    /// Real commands the simulated history refused.
    refused_commands: u64,
    /// The first 100 of them.
    refused: Vec<SimulationRefusal>,
}

/// A price simulation.
#[derive(ToSchema)]
pub struct SimulationView {
    /// Its id.
    id: Uuid,
    /// `running`, `done` or `failed` (also when the instance running it stopped).
    #[schema(pattern = "^(running|done|failed)$")]
    status: String,
    /// Share of the subscriptions re-billed, 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    progress: f64,
    /// Window start: invoices issued at or after it count.
    from: DateTime<Utc>,
    /// Window end: invoices issued before it count.
    to: DateTime<Utc>,
    /// The codes of the candidate plans.
    plans: Vec<String>,
    /// The tenants it is limited to (`null`: all).
    tenants: Option<Vec<Uuid>>,
    /// When it was started.
    created_at: DateTime<Utc>,
    /// When it ended.
    finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    error: Option<String>,
    /// The result, once `done`.
    result: Option<SimulationResult>,
}

/// A simulation in a list: as on its own page, with only the totals of its result.
#[derive(ToSchema)]
pub struct SimulationSummary {
    /// Its id.
    id: Uuid,
    /// `running`, `done` or `failed`.
    #[schema(pattern = "^(running|done|failed)$")]
    status: String,
    /// Share of the subscriptions re-billed, 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    progress: f64,
    /// Window start.
    from: DateTime<Utc>,
    /// Window end.
    to: DateTime<Utc>,
    /// The codes of the candidate plans.
    plans: Vec<String>,
    /// The tenants it is limited to (`null`: all).
    tenants: Option<Vec<Uuid>>,
    /// When it was started.
    created_at: DateTime<Utc>,
    /// When it ended.
    finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    error: Option<String>,
    /// The result's totals, once `done`.
    totals: Option<SimulationFigures>,
}

/// A page of simulations.
#[derive(ToSchema)]
pub struct SimulationPage {
    /// The simulations, newest first.
    data: Vec<SimulationSummary>,
    /// Whether more follow.
    has_more: bool,
    /// Pass as `cursor` for the next page.
    next_cursor: Option<String>,
}

/// What a billing run did (`POST /v1/admin/billing/run`).
#[derive(ToSchema)]
pub struct BillingRunReport {
    /// The instant it ran as of.
    as_of: Option<DateTime<Utc>>,
    /// Subscriptions that had something due.
    subscriptions_due: u64,
    /// Subscriptions that appended events.
    subscriptions_changed: u64,
    /// Invoices issued.
    invoices_issued: u64,
    /// Tenants whose status was brought in line with their subscription.
    tenants_updated: u64,
    /// Tenants whose missing subscription was opened.
    subscriptions_repaired: u64,
    /// Subscriptions that failed (the next run retries them).
    failures: Vec<String>,
}
