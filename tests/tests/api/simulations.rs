//! Price simulations end to end: a history walked with the test clock (trials, upgrades with
//! proration, downgrades, cancellations, overage, late usage, seats, coupons, credit, credit
//! notes, dunning), then re-billed under the real catalog (every difference 0.00) and under a
//! candidate where only starter's price changes; and a simulation changes nothing it reads.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN, WEBHOOK_SECRET};
use rust_decimal::Decimal;
use serde_json::{json, Value};

async fn app() -> TestApp {
    spawn_app_with(|c| {
        c.test_clock = true;
        c.webhook_secret = Some(WEBHOOK_SECRET.to_owned());
    })
    .await
}

/// Signs up `code` on `plan` (no trial unless `trial_days`), tax 10 %.
async fn tenant(app: &TestApp, code: &str, plan: &str, trial_days: u32) -> TestTenant {
    let mut body = TestApp::tenant_body(code);
    body["plan"] = json!(plan);
    body["trial_days"] = json!(trial_days);
    body["tax_rate"] = json!("10");
    app.create_tenant_from(body).await
}

async fn usage(app: &TestApp, tenant: &TestTenant, metric: &str, quantity: u64, key: &str, occurred_at: &str) {
    app.post("/v1/usage", &tenant.key, json!({"metric": metric, "quantity": quantity, "idempotency_key": key, "occurred_at": occurred_at}))
        .await
        .expect(202);
}

async fn latest_invoice(app: &TestApp, tenant: &TestTenant) -> Value {
    app.invoices(&tenant.key).await.last().cloned().expect("an invoice")
}

async fn pay(app: &TestApp, invoice: &Value, id: &str) {
    app.payment_webhook(json!({"id": id, "type": "payment.succeeded", "invoice_id": invoice["id"], "amount": invoice["amount_due"], "currency": invoice["currency"]}))
        .await
        .expect(200);
}

/// Starts a simulation and waits for it to be done; returns its result.
async fn simulate(app: &TestApp, body: Value) -> Value {
    let started = app.post("/v1/admin/simulations", ADMIN_TOKEN, body).await;
    let started = started.expect(202).clone();
    assert_eq!(started["status"], "running");
    let id = started["id"].as_str().expect("an id").to_owned();
    for _ in 0..600 {
        let reply = app.get(&format!("/v1/admin/simulations/{id}"), ADMIN_TOKEN).await;
        let view = reply.expect(200).clone();
        match view["status"].as_str() {
            Some("done") => {
                assert_eq!(view["progress"], 1.0);
                return view["result"].clone();
            }
            Some("running") => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("simulation ended {other:?}: {view}"),
        }
    }
    panic!("the simulation did not finish");
}

fn dec(value: &Value) -> Decimal {
    value.as_str().unwrap_or_else(|| panic!("a money string: {value}")).parse().expect("a decimal")
}

/// The window's real subtotals per tenant code, from the invoices the API lists.
async fn subtotals(app: &TestApp, tenants: &[&TestTenant], from: &str, to: &str) -> BTreeMap<String, Decimal> {
    let mut sums = BTreeMap::new();
    for tenant in tenants {
        let mut sum = Decimal::ZERO;
        for invoice in app.invoices(&tenant.key).await {
            let issued = invoice["issued_at"].as_str().unwrap();
            if issued >= from && issued < to {
                sum += dec(&invoice["subtotal"]);
            }
        }
        sums.insert(tenant.code.clone(), sum);
    }
    sums
}

fn by_tenant(result: &Value) -> BTreeMap<String, Value> {
    result["by_tenant"].as_array().unwrap().iter().map(|t| (t["code"].as_str().unwrap().to_owned(), t.clone())).collect()
}

/// Walks six tenants through half a year; returns them.
async fn history(app: &TestApp) -> Vec<TestTenant> {
    app.set_clock("2027-01-01T09:00:00Z").await;
    // Stays on starter all along, pays everything: the clean case of "Δprice × periods".
    let steady = tenant(app, "steady", "starter", 0).await;
    // A trial, then starter with overage, late usage and a failed then recovered payment.
    let trial = tenant(app, "trialist", "starter", 14).await;
    // Starter, upgraded half-way through a period, then a scheduled downgrade.
    let mover = tenant(app, "mover", "starter", 0).await;
    // Professional, downgraded immediately, later cancelled at period end.
    let leaver = tenant(app, "leaver", "professional", 0).await;
    // Starter with seats added automatically, a coupon and a credit grant; cancelled now.
    let extras = tenant(app, "extras", "starter", 0).await;
    // Monthly starter that switches to yearly.
    let yearly = tenant(app, "yearly", "starter", 0).await;

    for (tenant, n) in [(&steady, 1), (&mover, 3), (&leaver, 4), (&extras, 5), (&yearly, 6)] {
        pay(app, &latest_invoice(app, tenant).await, &format!("first-{n}")).await;
    }
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "SIM20", "percent_off": 20, "duration": "repeating", "duration_in_periods": 2}))
        .await
        .expect(201);
    app.post("/v1/subscription/coupon", &extras.key, json!({"code": "SIM20"})).await.expect(200);
    app.post(&format!("/v1/tenants/{}/credits", extras.id), ADMIN_TOKEN, json!({"amount": "12.34", "reason": "Goodwill"}))
        .await
        .expect(201);
    app.put("/v1/subscription/addons", &extras.key, json!({"extra_users": 0, "auto_add_seats": true})).await.expect(200);
    for i in 0..3 {
        app.post("/v1/members", &extras.key, json!({"email": format!("m{i}@extras.example"), "role": "member"})).await.expect(201);
    }

    app.set_clock("2027-01-16T09:00:00Z").await;
    // A fourth member: a seat added for the rest of January.
    app.post("/v1/members", &extras.key, json!({"email": "m3@extras.example", "role": "member"})).await.expect(201);
    // Mover: exactly half-way through Jan 1 09:00 – Feb 1 09:00 (31 days) is Jan 16 21:00.
    app.set_clock("2027-01-16T21:00:00Z").await;
    let upgraded = app.post("/v1/subscription/change-plan", &mover.key, json!({"plan": "professional"})).await.expect(200).clone();
    let lines: Vec<&str> = upgraded["invoice"]["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_str().unwrap()).collect();
    assert_eq!(lines, ["-14.50", "39.50"]);
    pay(app, &upgraded["invoice"], "mover-up").await;
    app.post("/v1/subscription/change-plan", &leaver.key, json!({"plan": "starter", "immediately": true})).await.expect(200);

    // Trial ends Jan 15 09:00 (anchor); renewals for everybody on Feb 1 / Feb 15.
    app.set_clock("2027-02-01T09:00:00Z").await;
    usage(app, &trial, "api_calls", 12_001, "t-calls-1", "2027-01-20T00:00:00Z").await;
    usage(app, &trial, "sms", 7, "t-sms-1", "2027-01-21T00:00:00Z").await;
    for (tenant, n) in [(&steady, 1), (&mover, 3), (&leaver, 4), (&extras, 5), (&yearly, 6)] {
        let invoice = latest_invoice(app, tenant).await;
        if invoice["status"] == "open" {
            pay(app, &invoice, &format!("feb-{n}")).await;
        }
    }
    let trial_first = app.invoices(&trial.key).await[0].clone();
    pay(app, &trial_first, "trial-1").await;
    app.post("/v1/subscription/change-plan", &mover.key, json!({"plan": "starter"})).await.expect(200);
    app.post("/v1/subscription/cancel", &leaver.key, json!({"at_period_end": true})).await.expect(200);
    app.post("/v1/subscription/change-plan", &yearly.key, json!({"plan": "starter", "billing_period": "yearly"})).await.expect(200);

    app.set_clock("2027-02-15T09:00:00Z").await;
    // The trialist's February renewal bills January's overage; its payment fails, then succeeds.
    let renewal = latest_invoice(app, &trial).await;
    app.payment_webhook(
        json!({"id": "trial-fail", "type": "payment.failed", "invoice_id": renewal["id"], "amount": renewal["total"], "currency": "EUR"}),
    )
    .await
    .expect(200);
    app.set_clock("2027-02-18T09:00:00Z").await;
    // Late usage for the billed period (Jan 15 – Feb 15), found before the next invoice.
    usage(app, &trial, "api_calls", 2_500, "t-calls-late", "2027-02-10T00:00:00Z").await;
    pay(app, &renewal, "trial-ok").await;
    // A credit note on the steady tenant's (paid) February invoice.
    let february = latest_invoice(app, &steady).await;
    app.post(
        &format!("/v1/invoices/{}/credit-notes", february["id"].as_str().unwrap()),
        ADMIN_TOKEN,
        json!({"amount": "5.00", "reason": "Outage"}),
    )
    .await
    .expect(201);

    app.set_clock("2027-03-01T09:00:00Z").await;
    app.post("/v1/subscription/cancel", &extras.key, json!({"at_period_end": false})).await.expect(200);
    for month in ["2027-03-15T09:00:00Z", "2027-04-01T09:00:00Z", "2027-05-01T09:00:00Z", "2027-06-01T09:00:00Z", "2027-06-20T09:00:00Z"] {
        app.set_clock(month).await;
        for (i, tenant) in [&steady, &trial, &mover].into_iter().enumerate() {
            let invoice = latest_invoice(app, tenant).await;
            if invoice["status"] == "open" {
                pay(app, &invoice, &format!("{month}-{i}")).await;
            }
        }
    }
    vec![steady, trial, mover, leaver, extras, yearly]
}

const FROM: &str = "2027-01-01T00:00:00Z";
const TO: &str = "2027-07-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_catalog_re_bills_every_invoice_exactly_and_a_new_starter_price_shows_its_difference() {
    let app = app().await;
    let tenants = history(&app).await;
    let refs: Vec<&TestTenant> = tenants.iter().collect();
    let real = subtotals(&app, &refs, FROM, TO).await;
    let events_before = app.all_events().await.len();

    // Identity: with the real catalog every figure is re-billed to the cent.
    let identity = simulate(&app, json!({"from": FROM, "to": TO, "plans": []})).await;
    assert_eq!(identity["refused_commands"], 0, "{}", identity["refused"]);
    assert_eq!(identity["subscriptions"], 6);
    for figures in [&identity["totals"]]
        .into_iter()
        .chain(["by_month", "by_plan", "by_tenant"].iter().flat_map(|k| identity[*k].as_array().unwrap().iter()))
    {
        assert_eq!(figures["difference"], "0.00", "{figures}");
        assert_eq!(figures["actual"], figures["simulated"], "{figures}");
    }
    let listed = by_tenant(&identity);
    for (code, sum) in &real {
        assert_eq!(dec(&listed[code]["actual"]), *sum, "{code}: actual is the sum of its invoices' subtotals");
    }
    let total: Decimal = real.values().sum();
    assert_eq!(dec(&identity["totals"]["actual"]), total);
    assert_eq!(identity["invoices_actual"], identity["invoices_simulated"]);
    let months: Vec<&str> = identity["by_month"].as_array().unwrap().iter().map(|m| m["month"].as_str().unwrap()).collect();
    assert_eq!(months, ["2027-01", "2027-02", "2027-03", "2027-04", "2027-05", "2027-06"]);

    // Change: starter at 39.00 instead of 29.00, everything else as it is.
    let starter = json!({"code": "starter", "name": "Starter", "monthly_price": "39.00",
        "limits": {"users": 3, "bookings_per_month": 100, "events": 5, "tickets_per_event": 50, "storage_mb": 1024, "api_calls_per_month": 10000},
        "features": ["bookings", "events"], "rate_limit_per_minute": 200});
    let changed = simulate(&app, json!({"from": FROM, "to": TO, "plans": [starter]})).await;
    assert_eq!(changed["refused_commands"], 0, "{}", changed["refused"]);
    let listed = by_tenant(&changed);
    // Steady: six monthly starter invoices (Jan to Jun), each 10.00 more.
    let steady_invoices = app.invoices(&tenants[0].key).await.len();
    assert_eq!(steady_invoices, 6);
    assert_eq!(listed["steady"]["difference"], "60.00", "{}", listed["steady"]);
    // The trialist: six starter periods invoiced (Jan 15 to Jun 15; the trial is free), its
    // overage and late usage under the same allowance.
    assert_eq!(listed["trialist"]["difference"], "60.00", "{}", listed["trialist"]);
    // Mover: January at starter (+10.00); the upgrade half-way credits half of 39.00 instead of
    // half of 29.00 (-19.50 instead of -14.50: -5.00); February on professional (+0); March to
    // June on starter again (+40.00).
    assert_eq!(listed["mover"]["difference"], "45.00", "{}", listed["mover"]);
    let total_difference: Decimal = listed.values().map(|t| dec(&t["difference"])).sum();
    assert_eq!(dec(&changed["totals"]["difference"]), total_difference);
    assert_eq!(dec(&changed["totals"]["actual"]), total, "the actual side does not depend on the candidate");

    // The CLI (`saas-ledger simulate --plans FILE`) prints the same figures from the same code.
    let plans = api::cli::candidate_plans(&json!([starter]).to_string()).unwrap();
    let from = FROM.parse().unwrap();
    let to = TO.parse().unwrap();
    let input = projections::simulation::SimulationInput { from, to, plans, tenants: None };
    let seen = std::sync::Mutex::new(Vec::new());
    let cli = projections::simulation::simulate(&app.pool, &input, &|done, total| seen.lock().unwrap().push((done, total))).await.unwrap();
    assert_eq!(seen.lock().unwrap().last(), Some(&(6, 6)), "progress ends at every subscription");
    let mut printed = Vec::new();
    api::cli::print_simulation(&cli, &mut printed).unwrap();
    let printed = String::from_utf8(printed).unwrap();
    let total_row = printed.lines().find(|l| l.starts_with("total")).unwrap().split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        total_row[1..],
        [&changed["totals"]["actual"], &changed["totals"]["simulated"], &changed["totals"]["difference"]].map(|v| v.as_str().unwrap())
    );
    assert!(printed.lines().any(|l| l.starts_with("mover") && l.trim_end().ends_with("45.00")), "{printed}");
    assert!(api::cli::candidate_plans(r#"[{"code": "starter"}]"#).is_err());

    // A lower seat limit: what really happened stays, and the seats beyond it are reported.
    let two_seats =
        json!({"code": "starter", "name": "Starter", "monthly_price": "29.00", "limits": {"users": 2}, "rate_limit_per_minute": 200});
    let seats = simulate(&app, json!({"from": FROM, "to": TO, "plans": [two_seats], "tenants": ["extras"]})).await;
    assert_eq!(seats["subscriptions"], 1);
    // Four members at once from Jan 16; two seats plus the one added automatically.
    assert_eq!(seats["over_limit"], json!([{"tenant_id": tenants[4].id, "code": "extras", "metric": "users", "limit": 3, "used": 4}]));
    assert_eq!(seats["by_tenant"].as_array().unwrap().len(), 1);

    // Isolation: nothing was appended by any simulation.
    assert_eq!(app.all_events().await.len(), events_before);
    let listed: Vec<Value> = app.get("/v1/admin/simulations", ADMIN_TOKEN).await.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["tenants"], json!([tenants[4].id]), "newest first");
    assert_eq!(listed[1]["totals"]["difference"], changed["totals"]["difference"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulation_while_commands_flow_changes_no_event_audit_entry_or_read_model() {
    let app = app().await;
    app.set_clock("2027-01-01T09:00:00Z").await;
    let mut tenants = Vec::new();
    for i in 0..20 {
        tenants.push(tenant(&app, &format!("iso-{i}"), if i % 2 == 0 { "starter" } else { "professional" }, 0).await);
    }
    app.set_clock("2027-01-20T09:00:00Z").await;
    for (i, tenant) in tenants.iter().enumerate() {
        usage(&app, tenant, "api_calls", 11_000 + i as u64, &format!("jan-{i}"), "2027-01-10T00:00:00Z").await;
    }
    app.set_clock("2027-03-01T09:00:00Z").await;
    let before = snapshot(&app, &tenants).await;
    let events_before = app.all_events().await.len();

    // Commands flow while the simulation runs: usage facts of the next month.
    let writer = async {
        let mut written = 0;
        for round in 0..10 {
            for (i, tenant) in tenants.iter().enumerate() {
                usage(&app, tenant, "sms", 1, &format!("flow-{round}-{i}"), "2027-03-01T08:00:00Z").await;
                written += 1;
            }
        }
        written
    };
    let starter = json!({"code": "starter", "name": "Starter", "monthly_price": "19.00", "limits": {"users": 1, "api_calls_per_month": 5000}, "rate_limit_per_minute": 200});
    let (result, written) =
        tokio::join!(simulate(&app, json!({"from": "2027-01-01T00:00:00Z", "to": "2027-03-02T00:00:00Z", "plans": [starter]})), writer);
    assert_eq!(result["subscriptions"], 20);
    assert!(dec(&result["totals"]["difference"]) < Decimal::ZERO, "{}", result["totals"]);

    // Only the usage facts were appended, and every read model still says what it said.
    assert_eq!(app.all_events().await.len(), events_before + written);
    let after = snapshot(&app, &tenants).await;
    assert_eq!(after.0, before.0, "invoices unchanged");
    assert_eq!(after.1, before.1, "revenue analytics unchanged");
    assert_eq!(after.2["valid"], true);
    assert!(after.2["checked"].as_u64().unwrap() >= before.2["checked"].as_u64().unwrap());
}

/// What the read models say: every tenant's invoices, the revenue analytics, the audit chain.
async fn snapshot(app: &TestApp, tenants: &[TestTenant]) -> (Vec<Vec<Value>>, Value, Value) {
    let mut invoices = Vec::new();
    for tenant in tenants {
        invoices.push(app.invoices(&tenant.key).await);
    }
    let revenue =
        app.get("/v1/admin/analytics/revenue?from=2027-01-01T00:00:00Z&to=2027-04-01T00:00:00Z", ADMIN_TOKEN).await.expect(200).clone();
    let verify = app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200).clone();
    (invoices, revenue, verify)
}

#[tokio::test]
async fn simulations_are_the_admins_and_refuse_bad_input_with_the_field_named() {
    let app = app().await;
    let tenant = tenant(&app, "nosy", "starter", 0).await;
    app.post("/v1/admin/simulations", &tenant.key, json!({"from": FROM, "to": TO, "plans": []})).await.expect_error(403, "FORBIDDEN");
    app.get("/v1/admin/simulations", &tenant.key).await.expect_error(403, "FORBIDDEN");
    for (body, field) in [
        (json!({"from": TO, "to": FROM, "plans": []}), "to"),
        (json!({"from": FROM, "to": TO, "plans": [{"code": "starter"}]}), "plans[0]"),
        (
            json!({"from": FROM, "to": TO, "plans": [{"code": "starter", "name": "S", "monthly_price": "-1", "limits": {}, "rate_limit_per_minute": 1}]}),
            "plans[0].monthly_price",
        ),
        (json!({"from": FROM, "to": TO, "plans": [], "tenants": ["no-such-tenant"]}), "tenants[0]"),
    ] {
        let reply = app.post("/v1/admin/simulations", ADMIN_TOKEN, body.clone()).await;
        reply.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
    }
    app.post("/v1/admin/simulations", ADMIN_TOKEN, json!({"from": FROM, "plans": []})).await.expect(400);
    app.get("/v1/admin/simulations/00000000-0000-0000-0000-000000000000", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
    app.get("/v1/admin/simulations/nope", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
    // Limited to one tenant, by code.
    let result = simulate(&app, json!({"from": FROM, "to": "2030-01-01T00:00:00Z", "plans": [], "tenants": ["nosy"]})).await;
    assert_eq!(result["subscriptions"], 1);
}
