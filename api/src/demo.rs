//! `saas-ledger demo`: a year of believable history, so that a fresh install has something to
//! look at (the console's charts, the analytics, the simulations).
//!
//! Everything goes through the API's own routes, in process (as the console does), on the test
//! clock started a year ago and moved forward month by month: sign-ups across the plans and
//! both currencies, trials, yearly subscribers, seats, coupons, usage (some of it over the
//! allowance, some of it late), rooms and bookings, upgrades and downgrades, payments (most
//! invoices paid, some left to dunning), credit notes and a churn curve; each month ends with
//! the billing run the clock's move triggers. With `--webhook-url`, the platform and every tenth
//! tenant register webhook endpoints there (deliveries follow as on any server). Choices are drawn from a generator seeded with
//! `--seed`, so two runs with one seed make the same history (instants aside: the year ends
//! now). A database that already has tenants is refused.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use chrono::{DateTime, Duration, Utc};
use commands::clock::Clock;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// What to make.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The generator's seed.
    pub seed: u64,
    /// Tenants signed up over the year.
    pub tenants: usize,
    /// Where webhook endpoints point (none without it: a demo must not send events to a
    /// receiver nobody named).
    pub webhook_url: Option<String>,
}

/// What was made.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DemoReport {
    /// Tenants signed up.
    pub tenants: usize,
    /// Invoices issued by the billing runs.
    pub invoices_issued: usize,
    /// Invoices paid by hand (bank transfers).
    pub invoices_paid: usize,
    /// Usage facts recorded.
    pub usage_facts: usize,
    /// Bookings confirmed.
    pub bookings: usize,
    /// Credit notes issued against paid invoices (goodwill after a complaint).
    pub credit_notes: usize,
    /// Plan changes.
    pub plan_changes: usize,
    /// Subscriptions cancelled.
    pub cancellations: usize,
    /// Webhook endpoints registered (the platform's and some tenants').
    pub webhook_endpoints: usize,
    /// Requests the API refused as the rules say (a seat or quota over the plan's limit, ...).
    pub refused: usize,
}

/// A tenant the demo made.
struct DemoTenant {
    id: Uuid,
    plan: &'static str,
    room: Option<String>,
    cancelled: bool,
}

const PLANS: [(&str, u32); 4] = [("starter", 50), ("professional", 30), ("business", 15), ("enterprise", 5)];
const KINDS: [(&str, &str); 4] = [("clinic", "Clinic"), ("law_firm", "Law Office"), ("school", "School"), ("studio", "Studio")];
const PLACES: [&str; 10] = ["Alder", "Birch", "Cedar", "Elm", "Fir", "Hazel", "Linden", "Maple", "Oak", "Willow"];

/// Makes a year of history ending now. The server must run with the test clock started a year
/// ago, on a database without tenants.
pub async fn run(state: &AppState, options: DemoOptions) -> Result<DemoReport, ApiError> {
    let clock = state.manual_clock().ok_or_else(|| ApiError::internal("the demo needs the test clock"))?;
    if !state.reads().tenants().list(None, Default::default(), 1).await?.is_empty() {
        return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", "this database has tenants already: the demo fills an empty one"));
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut report = DemoReport::default();
    let mut tenants: Vec<DemoTenant> = Vec::new();
    let start = clock.now();
    if let Some(url) = &options.webhook_url {
        let endpoint = json!({"url": url, "event_types": ["*"], "description": "Demo: every tenant's events"});
        call(state, Method::POST, "/v1/webhook-endpoints", None, Some(endpoint)).await?;
        report.webhook_endpoints += 1;
    }
    call(
        state,
        Method::POST,
        "/v1/coupons",
        None,
        Some(json!({"code": "WELCOME20", "percent_off": 20, "duration": "repeating", "duration_in_periods": 3})),
    )
    .await?;
    for month in 0..12i64 {
        let month_start = start + Duration::days(month * 365 / 12);
        let month_end = start + Duration::days((month + 1) * 365 / 12);
        // Sign-ups through the month, more as the year goes on (month m weighs m + 4).
        let weight_so_far: usize = (0..=month as usize).map(|m| m + 4).sum();
        let arriving = (options.tenants * weight_so_far).div_ceil(114).min(options.tenants) - tenants.len();
        for _ in 0..arriving {
            report.invoices_issued += move_clock(state, month_start + Duration::hours(rng.gen_range(1..24 * 20))).await?;
            let n = tenants.len();
            let (business, noun) = KINDS[rng.gen_range(0..KINDS.len())];
            let plan = weighted(&mut rng, &PLANS);
            let code = format!("{}-{}-{n}", PLACES[rng.gen_range(0..PLACES.len())].to_lowercase(), business.replace('_', "-"));
            let body = json!({
                "code": code,
                "name": format!("{} {noun} {n}", PLACES[n % PLACES.len()]),
                "business_type": business,
                "billing_email": format!("billing@{code}.example"),
                "plan": plan,
                "currency": if rng.gen_ratio(1, 5) { "USD" } else { "EUR" },
                "billing_period": if rng.gen_ratio(1, 10) { "yearly" } else { "monthly" },
                "trial_days": if rng.gen_ratio(3, 10) { 14 } else { 0 },
                "tax_rate": if rng.gen_ratio(1, 2) { "8.1" } else { "0" },
            });
            let created = call(state, Method::POST, "/v1/tenants", None, Some(body)).await?;
            let id: Uuid =
                created["id"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| ApiError::internal("a sign-up without an id"))?;
            report.tenants += 1;
            let mut tenant = DemoTenant { id, plan, room: None, cancelled: false };
            if let Some(url) = options.webhook_url.as_ref().filter(|_| n.is_multiple_of(10)) {
                let endpoint = json!({"url": url, "event_types": ["invoice.issued", "invoice.paid", "invoice.payment_reminder"],
                                      "description": "Demo: the tenant's accounting system"});
                call(state, Method::POST, "/v1/webhook-endpoints", Some(id), Some(endpoint)).await?;
                report.webhook_endpoints += 1;
            }
            if rng.gen_ratio(1, 6) {
                refusable(
                    &mut report,
                    call(state, Method::POST, "/v1/subscription/coupon", Some(id), Some(json!({"code": "WELCOME20"}))).await,
                )?;
            }
            for seat in 0..rng.gen_range(0..3) {
                let member = json!({"email": format!("staff{seat}@{code}.example"), "name": format!("Staff {seat}"), "role": "member"});
                refusable(&mut report, call(state, Method::POST, "/v1/members", Some(id), Some(member)).await)?;
            }
            if rng.gen_ratio(2, 5) {
                let room = json!({"name": "Room 1", "kind": "room", "capacity": 4});
                if let Some(room) = refusable(&mut report, call(state, Method::POST, "/v1/resources", Some(id), Some(room)).await)? {
                    tenant.room = room["id"].as_str().map(str::to_owned);
                }
            }
            tenants.push(tenant);
        }
        // Late in the month: its usage, bookings, plan changes and churn.
        report.invoices_issued += move_clock(state, month_end - Duration::days(2)).await?;
        let now = clock.now();
        for (t, tenant) in tenants.iter_mut().enumerate().filter(|(_, t)| !t.cancelled) {
            let allowance = match tenant.plan {
                "starter" => 10_000,
                "professional" => 50_000,
                "business" => 200_000,
                _ => 1_000_000,
            };
            let mut records: Vec<Value> = Vec::new();
            for i in 0..rng.gen_range(2..6) {
                let back = Duration::hours(rng.gen_range(1..24 * 25));
                let quantity = rng.gen_range(0..allowance * 2 / 5);
                records.push(json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": format!("demo-{month}-{t}-{i}"), "occurred_at": now - back}));
            }
            if rng.gen_ratio(1, 4) {
                let quantity = rng.gen_range(1..200);
                records.push(json!({"metric": "sms", "quantity": quantity, "idempotency_key": format!("demo-{month}-{t}-sms"), "occurred_at": now - Duration::days(1)}));
            }
            if month > 0 && rng.gen_ratio(1, 10) {
                // Late usage: a fact of the period already invoiced, billed on the next invoice.
                let quantity = rng.gen_range(100..5_000);
                records.push(json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": format!("demo-{month}-{t}-late"), "occurred_at": month_start - Duration::days(2)}));
            }
            let recorded = refusable(
                &mut report,
                call(state, Method::POST, "/v1/usage/batch", Some(tenant.id), Some(json!({"records": records}))).await,
            )?;
            report.usage_facts += recorded.and_then(|r| r["accepted"].as_u64()).unwrap_or(0) as usize;
            if let Some(room) = tenant.room.clone() {
                for b in 0..rng.gen_range(0..4i64) {
                    let starts =
                        (now + Duration::days(1 + b)).date_naive().and_hms_opt(9 + rng.gen_range(0..8), 0, 0).expect("an hour").and_utc();
                    let booking = json!({"resource_id": room, "starts_at": starts, "ends_at": starts + Duration::hours(1), "customer": {"name": format!("Customer {b}"), "email": format!("customer{b}@example.com")}});
                    if refusable(&mut report, call(state, Method::POST, "/v1/bookings", Some(tenant.id), Some(booking)).await)?.is_some() {
                        report.bookings += 1;
                    }
                }
            }
            let change = if rng.gen_ratio(1, 20) && tenant.plan != "enterprise" {
                Some((next_plan(tenant.plan, 1), true))
            } else if rng.gen_ratio(1, 50) && tenant.plan != "starter" {
                Some((next_plan(tenant.plan, -1), false))
            } else {
                None
            };
            if let Some((plan, immediately)) = change {
                let body = json!({"plan": plan, "immediately": immediately});
                if refusable(&mut report, call(state, Method::POST, "/v1/subscription/change-plan", Some(tenant.id), Some(body)).await)?
                    .is_some()
                {
                    tenant.plan = plan;
                    report.plan_changes += 1;
                }
            }
            if rng.gen_ratio(1, 30) {
                let cancelled =
                    call(state, Method::POST, "/v1/subscription/cancel", Some(tenant.id), Some(json!({"at_period_end": true}))).await;
                if refusable(&mut report, cancelled)?.is_some() {
                    tenant.cancelled = true;
                    report.cancellations += 1;
                }
            }
        }
        // Most open invoices are paid by bank transfer; a few are left to dunning.
        let open = call(state, Method::GET, "/v1/invoices?status=open&limit=100", None, None).await?;
        for invoice in open["data"].as_array().into_iter().flatten() {
            if rng.gen_ratio(9, 10) {
                let id = invoice["id"].as_str().unwrap_or_default();
                let paid = call(
                    state,
                    Method::POST,
                    &format!("/v1/invoices/{id}/pay"),
                    None,
                    Some(json!({"method": "bank_transfer", "reference": "demo"})),
                )
                .await;
                if refusable(&mut report, paid)?.is_some() {
                    report.invoices_paid += 1;
                    if rng.gen_ratio(1, 25) {
                        let note = json!({"amount": "5.00", "reason": "Goodwill after a support ticket"});
                        let noted = call(state, Method::POST, &format!("/v1/invoices/{id}/credit-notes"), None, Some(note)).await;
                        if refusable(&mut report, noted)?.is_some() {
                            report.credit_notes += 1;
                        }
                    }
                }
            }
        }
        // The month ends: the clock's move runs billing (renewals, trial ends, dunning).
        report.invoices_issued += move_clock(state, month_end.min(Utc::now())).await?;
    }
    report.invoices_issued += move_clock(state, Utc::now()).await?;
    Ok(report)
}

/// Moves the test clock to `to` (if later) through the API, which runs billing up to it;
/// returns the invoices that run issued.
async fn move_clock(state: &AppState, to: DateTime<Utc>) -> Result<usize, ApiError> {
    let now = state.manual_clock().map(|c| c.now()).unwrap_or(to);
    if to <= now {
        return Ok(0);
    }
    let moved = call(state, Method::PUT, "/v1/admin/clock", None, Some(json!({"now": to}))).await?;
    Ok(moved["billing"]["invoices_issued"].as_u64().unwrap_or(0) as usize)
}

/// A plan `steps` up (or down) the catalog from `plan`.
fn next_plan(plan: &str, steps: i32) -> &'static str {
    let at = PLANS.iter().position(|(p, _)| *p == plan).unwrap_or(0) as i32;
    PLANS[(at + steps).clamp(0, PLANS.len() as i32 - 1) as usize].0
}

/// One of `choices`, each with its weight.
fn weighted(rng: &mut StdRng, choices: &[(&'static str, u32)]) -> &'static str {
    let total: u32 = choices.iter().map(|(_, w)| w).sum();
    let mut pick = rng.gen_range(0..total);
    for (choice, weight) in choices {
        if pick < *weight {
            return choice;
        }
        pick -= weight;
    }
    choices[0].0
}

/// An answer, or `None` for a refusal the rules make (4xx: counted); a server fault stops the
/// demo.
fn refusable(report: &mut DemoReport, answer: Result<Value, ApiError>) -> Result<Option<Value>, ApiError> {
    match answer {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.status.is_client_error() => {
            report.refused += 1;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Calls the API in process as the platform admin, acting for `tenant` if given.
async fn call(state: &AppState, method: Method, path: &str, tenant: Option<Uuid>, body: Option<Value>) -> Result<Value, ApiError> {
    let mut request = Request::builder().method(method).uri(path);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let mut request = request.body(body).map_err(ApiError::internal)?;
    request.extensions_mut().insert(Caller::Admin { acting_for: tenant });
    let response = crate::app::middleware::router(state.clone()).oneshot(request).await.map_err(ApiError::internal)?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024).await.map_err(ApiError::internal)?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(value);
    }
    let message = value["error"]["message"].as_str().unwrap_or("the request failed").to_owned();
    Err(ApiError::new(status, value["error"]["code"].as_str().unwrap_or("ERROR"), message))
}
