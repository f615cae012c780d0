//! Billing end to end: a tenant's year, driven by the test clock and payment webhooks, with
//! every invoice line and total asserted to the cent.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN, WEBHOOK_SECRET};
use serde_json::{json, Value};

async fn billing_app() -> TestApp {
    spawn_app_with(|c| {
        c.test_clock = true;
        c.webhook_secret = Some(WEBHOOK_SECRET.to_owned());
    })
    .await
}

async fn invoices(app: &TestApp, tenant: &TestTenant) -> Vec<Value> {
    app.invoices(&tenant.key).await
}

/// Lines as (kind, amount) and the invoice's (subtotal, tax, total).
fn money(invoice: &Value) -> (Vec<(String, String)>, [String; 3]) {
    let lines = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect();
    let s = |k: &str| invoice[k].as_str().unwrap().to_owned();
    (lines, [s("subtotal"), s("tax"), s("total")])
}

fn lines(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, a)| ((*k).to_owned(), (*a).to_owned())).collect()
}

fn totals(subtotal: &str, tax: &str, total: &str) -> [String; 3] {
    [subtotal.to_owned(), tax.to_owned(), total.to_owned()]
}

async fn pay(app: &TestApp, invoice: &Value, id: &str) {
    let reply = app
        .payment_webhook(json!({"id": id, "type": "payment.succeeded", "invoice_id": invoice["id"], "amount": invoice["total"], "currency": invoice["currency"]}))
        .await;
    assert_eq!(reply.expect(200)["duplicate"], false);
}

async fn subscription(app: &TestApp, tenant: &TestTenant) -> Value {
    app.get("/v1/subscription", &tenant.key).await.expect(200).clone()
}

#[tokio::test]
async fn a_tenant_walks_through_a_year_of_billing() {
    let app = billing_app().await;
    app.set_clock("2027-01-17T09:00:00Z").await;
    let mut body = TestApp::tenant_body("walker");
    body["tax_rate"] = json!("10");
    let created = app.create_tenant_raw(body).await.expect(201).clone();
    let tenant = TestTenant {
        id: created["id"].as_str().unwrap().parse().unwrap(),
        code: "walker".into(),
        key: created["api_key"].as_str().unwrap().into(),
    };

    // Trial: 14 days, no invoice; its end is the billing anchor (Jan 31).
    let sub = subscription(&app, &tenant).await;
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["trial_ends_at"], "2027-01-31T09:00:00Z");
    assert_eq!(sub["plan"], "starter");
    assert!(invoices(&app, &tenant).await.is_empty());

    // Trial end: the first period is invoiced in advance.
    app.set_clock("2027-01-31T09:00:00Z").await;
    let sub = subscription(&app, &tenant).await;
    assert_eq!((sub["status"].as_str(), sub["current_period_end"].as_str()), (Some("active"), Some("2027-02-28T09:00:00Z")));
    let first = invoices(&app, &tenant).await[0].clone();
    assert_eq!(first["number"], "WALKER-000001");
    assert_eq!(first["currency"], "EUR");
    assert_eq!(first["status"], "open");
    assert_eq!(money(&first), (lines(&[("plan", "29.00")]), totals("29.00", "2.90", "31.90")));
    pay(&app, &first, "evt_1").await;
    assert_eq!(app.get(&format!("/v1/invoices/{}", first["id"].as_str().unwrap()), &tenant.key).await.expect(200)["status"], "paid");

    // Usage in February is billed in arrears with the March renewal (Feb 28, anchor day clamped).
    app.set_clock("2027-02-12T00:00:00Z").await;
    app.post(
        "/v1/usage",
        &tenant.key,
        json!({"metric": "api_calls", "quantity": 12001, "idempotency_key": "feb-calls", "occurred_at": "2027-02-10T00:00:00Z"}),
    )
    .await
    .expect(202);
    app.post(
        "/v1/usage",
        &tenant.key,
        json!({"metric": "sms", "quantity": 3, "idempotency_key": "feb-sms", "occurred_at": "2027-02-11T00:00:00Z"}),
    )
    .await
    .expect(202);
    app.set_clock("2027-02-28T09:00:00Z").await;
    let second = invoices(&app, &tenant).await[1].clone();
    assert_eq!(second["period_start"], "2027-02-28T09:00:00Z");
    assert_eq!(second["period_end"], "2027-03-31T09:00:00Z");
    // 12,001 calls on 10,000 included: 3 started blocks of 1,000 × 0.50; 3 SMS × 0.05.
    assert_eq!(money(&second), (lines(&[("plan", "29.00"), ("overage", "1.50"), ("overage", "0.15")]), totals("30.65", "3.07", "33.72")));
    pay(&app, &second, "evt_2").await;

    // Upgrade exactly half-way through Feb 28 09:00 – Mar 31 09:00 (31 days): Mar 15 21:00.
    app.set_clock("2027-03-15T21:00:00Z").await;
    let upgraded = app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "professional"})).await.expect(200).clone();
    assert_eq!(upgraded["plan"], "professional");
    assert_eq!(money(&upgraded["invoice"]), (lines(&[("proration", "-14.50"), ("proration", "39.50")]), totals("25.00", "2.50", "27.50")));
    pay(&app, &upgraded["invoice"], "evt_3").await;

    // Downgrade: waits for the period end.
    let scheduled = app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "starter"})).await.expect(200).clone();
    assert_eq!(scheduled["plan"], "professional");
    assert_eq!(scheduled["pending_change"]["plan"], "starter");
    assert_eq!(scheduled["pending_change"]["effective_at"], "2027-03-31T09:00:00Z");
    app.set_clock("2027-03-31T09:00:00Z").await;
    let fourth = invoices(&app, &tenant).await[3].clone();
    assert_eq!(money(&fourth), (lines(&[("plan", "29.00")]), totals("29.00", "2.90", "31.90")));
    assert_eq!(subscription(&app, &tenant).await["plan"], "starter");

    // A failed payment: past due, then suspended after 7 days of grace; commands get 402.
    app.set_clock("2027-04-01T09:00:00Z").await;
    app.payment_webhook(
        json!({"id": "evt_4", "type": "payment.failed", "invoice_id": fourth["id"], "amount": fourth["total"], "currency": "EUR"}),
    )
    .await
    .expect(200);
    assert_eq!(subscription(&app, &tenant).await["status"], "past_due");
    app.set_clock("2027-04-08T08:59:59Z").await;
    assert_eq!(subscription(&app, &tenant).await["status"], "past_due");
    app.set_clock("2027-04-08T09:00:00Z").await;
    assert_eq!(subscription(&app, &tenant).await["status"], "suspended");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect_error(402, "TENANT_SUSPENDED");
    app.get("/v1/invoices", &tenant.key).await.expect(200);

    // Payment reactivates both the subscription and the tenant.
    pay(&app, &fourth, "evt_5").await;
    assert_eq!(subscription(&app, &tenant).await["status"], "active");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect(201);

    // The rest of the year renews on the anchor day, clamped to each month's end.
    let mut paid = 5;
    for (month_end, expected_end) in [
        ("2027-04-30T09:00:00Z", "2027-05-31T09:00:00Z"),
        ("2027-05-31T09:00:00Z", "2027-06-30T09:00:00Z"),
        ("2027-06-30T09:00:00Z", "2027-07-31T09:00:00Z"),
        ("2027-07-31T09:00:00Z", "2027-08-31T09:00:00Z"),
        ("2027-08-31T09:00:00Z", "2027-09-30T09:00:00Z"),
        ("2027-09-30T09:00:00Z", "2027-10-31T09:00:00Z"),
        ("2027-10-31T09:00:00Z", "2027-11-30T09:00:00Z"),
        ("2027-11-30T09:00:00Z", "2027-12-31T09:00:00Z"),
        ("2027-12-31T09:00:00Z", "2028-01-31T09:00:00Z"),
        ("2028-01-31T09:00:00Z", "2028-02-29T09:00:00Z"),
    ] {
        app.set_clock(month_end).await;
        let latest = invoices(&app, &tenant).await.last().unwrap().clone();
        assert_eq!((latest["period_start"].as_str(), latest["period_end"].as_str()), (Some(month_end), Some(expected_end)));
        assert_eq!(money(&latest), (lines(&[("plan", "29.00")]), totals("29.00", "2.90", "31.90")));
        paid += 1;
        pay(&app, &latest, &format!("evt_{paid}")).await;
    }

    // Cancel at period end (Feb 29, 2028: a leap day); resume, cancel again, and it ends.
    let cancelling = app.post("/v1/subscription/cancel", &tenant.key, json!({"at_period_end": true})).await.expect(200).clone();
    assert_eq!(cancelling["cancel_at_period_end"], true);
    assert_eq!(app.post("/v1/subscription/resume", &tenant.key, json!({})).await.expect(200)["cancel_at_period_end"], false);
    app.post("/v1/subscription/resume", &tenant.key, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    app.post("/v1/subscription/cancel", &tenant.key, json!({"at_period_end": true})).await.expect(200);
    app.set_clock("2028-02-29T09:00:00Z").await;
    let ended = subscription(&app, &tenant).await;
    assert_eq!(ended["status"], "cancelled");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect_error(403, "TENANT_CANCELLED");

    // Every invoice: numbered in sequence, lines summing to the subtotal, total = subtotal + tax.
    let all = invoices(&app, &tenant).await;
    assert_eq!(all.len(), 14);
    for (i, invoice) in all.iter().enumerate() {
        assert_eq!(invoice["number"], format!("WALKER-{:06}", i + 1));
        assert_eq!(invoice["status"], "paid");
        let cents = |v: &Value| (v.as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64;
        let sum: i64 = invoice["lines"].as_array().unwrap().iter().map(|l| cents(&l["amount"])).sum();
        assert_eq!(sum, cents(&invoice["subtotal"]));
        assert_eq!(cents(&invoice["subtotal"]) + cents(&invoice["tax"]), cents(&invoice["total"]));
    }

    // The billing run is idempotent.
    let again = app.post("/v1/admin/billing/run", ADMIN_TOKEN, json!({"as_of": "2028-02-29T09:00:00Z"})).await.expect(200).clone();
    assert_eq!(again["subscriptions_changed"], 0);
    assert_eq!(invoices(&app, &tenant).await.len(), 14);
}

#[tokio::test]
async fn without_a_trial_the_first_invoice_is_issued_at_sign_up() {
    let app = billing_app().await;
    app.set_clock("2027-05-10T12:00:00Z").await;
    let mut body = TestApp::tenant_body("no-trial");
    body["trial_days"] = json!(0);
    body["plan"] = json!("business");
    body["billing_period"] = json!("yearly");
    body["tax_rate"] = json!("7.7");
    let key = app.create_tenant_raw(body).await.expect(201)["api_key"].as_str().unwrap().to_owned();
    let tenant = TestTenant { id: uuid::Uuid::nil(), code: "no-trial".into(), key };
    let sub = subscription(&app, &tenant).await;
    assert_eq!((sub["status"].as_str(), sub["current_period_end"].as_str()), (Some("active"), Some("2028-05-10T12:00:00Z")));
    let first = invoices(&app, &tenant).await[0].clone();
    // Yearly business: 10 × 199.00; tax 7.7 % of 1990.00 = 153.23.
    assert_eq!(money(&first), (lines(&[("plan", "1990.00")]), totals("1990.00", "153.23", "2143.23")));
}

#[tokio::test]
async fn payment_webhooks_are_verified_and_processed_once() {
    let app = billing_app().await;
    app.set_clock("2027-05-10T12:00:00Z").await;
    let mut body = TestApp::tenant_body("hooked");
    body["trial_days"] = json!(0);
    let key = app.create_tenant_raw(body).await.expect(201)["api_key"].as_str().unwrap().to_owned();
    let tenant = TestTenant { id: uuid::Uuid::nil(), code: "hooked".into(), key };
    let invoice = invoices(&app, &tenant).await[0].clone();
    let note =
        json!({"id": "evt_once", "type": "payment.succeeded", "invoice_id": invoice["id"], "amount": invoice["total"], "currency": "EUR"});

    let raw = serde_json::to_vec(&note).unwrap();
    let now = chrono::Utc::now().timestamp();
    let send = |signature: String, raw: Vec<u8>| {
        app.send(
            app.request(reqwest::Method::POST, "/v1/webhooks/payments", None)
                .header("Content-Type", "application/json")
                .header("Payment-Signature", signature)
                .body(raw),
        )
    };
    send(e2e::payment_signature(&raw, now - 301), raw.clone()).await.expect_error(400, "VALIDATION_FAILED");
    send(format!("t={now},v1={}", "00".repeat(32)), raw.clone()).await.expect_error(400, "VALIDATION_FAILED");
    send(e2e::payment_signature(b"{}", now), raw.clone()).await.expect_error(400, "VALIDATION_FAILED");
    app.send(app.request(reqwest::Method::POST, "/v1/webhooks/payments", None).json(&note)).await.expect_error(400, "VALIDATION_FAILED");

    let wrong_amount =
        json!({"id": "evt_wrong", "type": "payment.succeeded", "invoice_id": invoice["id"], "amount": "1.00", "currency": "EUR"});
    app.payment_webhook(wrong_amount).await.expect_error(400, "VALIDATION_FAILED");
    let unknown =
        json!({"id": "evt_x", "type": "payment.succeeded", "invoice_id": uuid::Uuid::now_v7(), "amount": "1.00", "currency": "EUR"});
    app.payment_webhook(unknown).await.expect_error(404, "NOT_FOUND");

    let (a, b) = tokio::join!(app.payment_webhook(note.clone()), app.payment_webhook(note.clone()));
    let duplicates: Vec<bool> = [a, b].iter().map(|r| r.expect(200)["duplicate"].as_bool().unwrap()).collect();
    assert_eq!(duplicates.iter().filter(|d| !**d).count(), 1, "exactly one delivery is processed: {duplicates:?}");
    let paid: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'PaymentSucceeded'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(paid, 1);

    let plain = e2e::spawn_app().await;
    plain.payment_webhook(note).await.expect_error(503, "WEBHOOKS_DISABLED");
}

#[tokio::test]
async fn plans_are_listed_and_new_versions_leave_existing_subscribers_alone() {
    let app = billing_app().await;
    app.set_clock("2027-06-01T00:00:00Z").await;
    let plans = app.get("/v1/plans", ADMIN_TOKEN).await.expect(200).clone();
    // The API-call overage is published as a package charge with the contract's figures.
    assert_eq!(
        plans[0]["charges"],
        json!([{"metric": "api_calls", "model": "package", "included": 10000, "package_size": 1000, "package_price": "0.50"}]),
        "{}",
        plans[0]
    );
    let summary: Vec<(String, String, String, Value)> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap().into(),
                p["monthly_price"].as_str().unwrap().into(),
                p["yearly_price"].as_str().unwrap().into(),
                p["rate_limit_per_minute"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("starter".into(), "29.00".into(), "290.00".into(), json!(200)),
            ("professional".into(), "79.00".into(), "790.00".into(), json!(500)),
            ("business".into(), "199.00".into(), "1990.00".into(), json!(1000)),
            ("enterprise".into(), "499.00".into(), "4990.00".into(), json!(5000)),
        ]
    );
    assert_eq!(
        plans[0]["limits"],
        json!({"users": 3, "bookings_per_month": 100, "events": 5, "tickets_per_event": 50, "storage_mb": 1024, "api_calls_per_month": 10000})
    );
    assert_eq!(plans[3]["limits"]["users"], Value::Null);

    let mut body = TestApp::tenant_body("early-bird");
    body["trial_days"] = json!(0);
    let key = app.create_tenant_raw(body).await.expect(201)["api_key"].as_str().unwrap().to_owned();
    let early = TestTenant { id: uuid::Uuid::nil(), code: "early-bird".into(), key };

    let v2 = json!({"code": "starter", "name": "Starter", "monthly_price": "35.00", "limits": {"users": 3, "bookings_per_month": 100, "events": 5, "tickets_per_event": 50, "storage_mb": 1024, "api_calls_per_month": 10000}, "features": ["bookings"], "rate_limit_per_minute": 200});
    let published = app.post("/v1/plans", ADMIN_TOKEN, v2.clone()).await.expect(201).clone();
    assert_eq!((published["version"].as_u64(), published["yearly_price"].as_str()), (Some(2), Some("350.00")));
    app.post("/v1/plans", &early.key, v2).await.expect_error(403, "FORBIDDEN");
    app.post("/v1/plans", ADMIN_TOKEN, json!({"code": "x", "name": "X", "monthly_price": "-1", "limits": {}, "rate_limit_per_minute": 1}))
        .await
        .expect_error(400, "VALIDATION_FAILED");

    // The early subscriber renews at the version it signed up on.
    app.set_clock("2027-07-01T00:00:00Z").await;
    let renewal = invoices(&app, &early).await.last().unwrap().clone();
    assert_eq!(money(&renewal).0, lines(&[("plan", "29.00")]));
    assert_eq!(subscription(&app, &early).await["plan_version"], 1);
}

#[tokio::test]
async fn a_payment_recorded_by_hand_pays_the_invoice_and_lifts_dunning() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("by-transfer", "starter").await;
    let first = invoices(&app, &tenant).await[0].clone();
    let path = format!("/v1/invoices/{}/pay", first["id"].as_str().unwrap());
    app.payment_webhook(json!({"id": "evt_fail", "type": "payment.failed", "invoice_id": first["id"], "amount": first["total"], "currency": first["currency"]}))
        .await
        .expect(200);
    app.set_clock("2027-01-09T00:00:00Z").await;
    assert_eq!(subscription(&app, &tenant).await["status"], "suspended");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect_error(402, "TENANT_SUSPENDED");

    // Only the admin records payments; the body is checked field by field.
    app.post(&path, &tenant.key, json!({"method": "bank_transfer"})).await.expect_error(403, "FORBIDDEN");
    let bad = app.post(&path, ADMIN_TOKEN, json!({"method": "cheque"})).await;
    bad.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad.body["error"]["details"]["field"], "method");
    let future = app.post(&path, ADMIN_TOKEN, json!({"method": "cash", "paid_at": "2027-02-01T00:00:00Z"})).await;
    assert_eq!(future.body["error"]["details"]["field"], "paid_at", "{}", future.body);
    let early = app.post(&path, ADMIN_TOKEN, json!({"method": "cash", "paid_at": "2026-12-31T00:00:00Z"})).await;
    assert_eq!(early.body["error"]["details"]["field"], "paid_at", "{}", early.body);
    app.post(&format!("/v1/invoices/{}/pay", uuid::Uuid::now_v7()), ADMIN_TOKEN, json!({"method": "cash"}))
        .await
        .expect_error(404, "NOT_FOUND");

    // The transfer arrived on Jan 8 at noon: the invoice is paid, the subscription and the
    // tenant are active again.
    let paid = app
        .post(&path, ADMIN_TOKEN, json!({"method": "bank_transfer", "reference": "UBS-2027-0042", "paid_at": "2027-01-08T12:00:00Z"}))
        .await
        .expect(200)
        .clone();
    assert_eq!((paid["status"].as_str(), paid["paid_at"].as_str()), (Some("paid"), Some("2027-01-08T12:00:00Z")));
    assert_eq!(subscription(&app, &tenant).await["status"], "active");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect(201);
    app.post(&path, ADMIN_TOKEN, json!({"method": "bank_transfer"})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    let events = app.all_events().await;
    let payment = events.iter().find(|e| e["event_type"] == "PaymentSucceeded").expect("the payment is in the log");
    assert_eq!(
        (payment["payload"]["method"].as_str(), payment["payload"]["reference"].as_str()),
        (Some("bank_transfer"), Some("UBS-2027-0042"))
    );
}

#[tokio::test]
async fn the_upcoming_invoice_is_the_one_the_next_period_then_issues() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("preview", "professional").await; // 50,000 calls included
    let trialing = app.create_tenant("preview-trial").await;
    let first = app.get("/v1/invoices/upcoming", &trialing.key).await.expect(200).clone();
    assert_eq!((first["issued_at"].as_str(), first["status"].as_str()), (Some("2027-01-15T00:00:00Z"), Some("draft")));
    assert_eq!(money(&first), (lines(&[("plan", "29.00")]), totals("29.00", "2.35", "31.35")));

    app.set_clock("2027-01-15T00:00:00Z").await;
    for (key, metric, quantity) in [("calls", "api_calls", 52_001), ("texts", "sms", 3)] {
        app.post(
            "/v1/usage",
            &tenant.key,
            json!({"metric": metric, "quantity": quantity, "idempotency_key": key, "occurred_at": "2027-01-10T00:00:00Z"}),
        )
        .await
        .expect(202);
    }
    app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "starter"})).await.expect(200);
    // Starter from Feb 1 in advance; January's usage in arrears under professional's allowance.
    let draft = app.get("/v1/invoices/upcoming", &tenant.key).await.expect(200).clone();
    assert_eq!(money(&draft), (lines(&[("plan", "29.00"), ("overage", "1.50"), ("overage", "0.15")]), totals("30.65", "2.48", "33.13")));
    assert!(draft.get("id").is_none() && draft.get("number").is_none(), "{draft}");
    assert_eq!(invoices(&app, &tenant).await.len(), 1, "a preview stores nothing");

    app.set_clock("2027-02-01T00:00:00Z").await;
    let issued = invoices(&app, &tenant).await[1].clone();
    for field in ["period_start", "period_end", "currency", "lines", "subtotal", "tax", "total", "issued_at", "due_at", "tenant_id"] {
        assert_eq!(draft[field], issued[field], "{field}");
    }

    // Nothing is coming once the subscription is cancelled.
    app.post("/v1/subscription/cancel", &tenant.key, json!({"at_period_end": false})).await.expect(200);
    app.get("/v1/invoices/upcoming", &tenant.key).await.expect_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn net_terms_set_at_sign_up_or_later_make_invoices_due_that_many_days_after_issue() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let mut body = TestApp::tenant_body("net-thirty");
    body["trial_days"] = json!(0);
    body["net_terms_days"] = json!(30);
    let tenant = app.create_tenant_from(body).await;
    assert_eq!(app.get("/v1/tenant", &tenant.key).await.expect(200)["net_terms_days"], 30);
    let first = invoices(&app, &tenant).await[0].clone();
    assert_eq!((first["issued_at"].as_str(), first["due_at"].as_str()), (Some("2027-01-01T00:00:00Z"), Some("2027-01-31T00:00:00Z")));

    let mut too_long = TestApp::tenant_body("net-long");
    too_long["net_terms_days"] = json!(91);
    let refused = app.create_tenant_raw(too_long).await;
    refused.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(refused.body["error"]["details"]["field"], "net_terms_days");

    // The admin changes them by code; the next invoice follows.
    let path = "/v1/tenants/net-thirty";
    app.send(app.request(reqwest::Method::PATCH, path, Some(&tenant.key)).json(&json!({"net_terms_days": 10})))
        .await
        .expect_error(403, "FORBIDDEN");
    let bad = app.send(app.request(reqwest::Method::PATCH, path, Some(ADMIN_TOKEN)).json(&json!({"net_terms_days": -1}))).await;
    assert_eq!(bad.body["error"]["details"]["field"], "net_terms_days", "{}", bad.body);
    app.send(app.request(reqwest::Method::PATCH, path, Some(ADMIN_TOKEN)).json(&json!({"name": "x"})))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    let patched = app
        .send(app.request(reqwest::Method::PATCH, path, Some(ADMIN_TOKEN)).json(&json!({"net_terms_days": 10})))
        .await
        .expect(200)
        .clone();
    assert_eq!(patched["net_terms_days"], 10);
    app.set_clock("2027-02-01T00:00:00Z").await;
    let second = invoices(&app, &tenant).await[1].clone();
    assert_eq!((second["issued_at"].as_str(), second["due_at"].as_str()), (Some("2027-02-01T00:00:00Z"), Some("2027-02-11T00:00:00Z")));
}

#[tokio::test]
async fn plans_are_sold_per_currency_and_tenants_billed_in_theirs() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let plans = app.get("/v1/plans", ADMIN_TOKEN).await.expect(200).clone();
    let starter = plans.as_array().unwrap().iter().find(|p| p["code"] == "starter").unwrap().clone();
    assert_eq!(
        starter["prices"],
        json!({"EUR": {"monthly": "29.00", "yearly": "290.00"}, "USD": {"monthly": "29.00", "yearly": "290.00"}})
    );
    assert_eq!((starter["currency"].as_str(), starter["monthly_price"].as_str()), (Some("EUR"), Some("29.00")));

    // A USD tenant is billed the USD price, in USD.
    let mut usd = TestApp::tenant_body("in-dollars");
    usd["currency"] = json!("USD");
    usd["trial_days"] = json!(0);
    let tenant = app.create_tenant_from(usd).await;
    let first = invoices(&app, &tenant).await[0].clone();
    assert_eq!((first["currency"].as_str(), first["subtotal"].as_str()), (Some("USD"), Some("29.00")));

    // No plan of the catalog is sold in JPY: the sign-up is refused and records nothing.
    let mut yen = TestApp::tenant_body("in-yen");
    yen["currency"] = json!("JPY");
    let refused = app.create_tenant_raw(yen).await;
    refused.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(refused.body["error"]["details"]["field"], "currency");
    app.get("/v1/tenants/in-yen", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");

    // A plan sold in CHF only: USD tenants cannot change to it; a CHF tenant pays its price.
    let chf = json!({"code": "alpine", "name": "Alpine", "prices": {"CHF": {"monthly": "39.00"}},
                     "limits": {"api_calls_per_month": 10000}, "rate_limit_per_minute": 200});
    let published = app.post("/v1/plans", ADMIN_TOKEN, chf).await.expect(201).clone();
    assert_eq!((published["currency"].as_str(), published["yearly_price"].as_str()), (Some("CHF"), Some("390.00")));
    let change = app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "alpine"})).await;
    change.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(change.body["error"]["details"]["field"], "currency");
    let mut swiss = TestApp::tenant_body("in-francs");
    swiss["currency"] = json!("CHF");
    swiss["plan"] = json!("alpine");
    swiss["trial_days"] = json!(0);
    let swiss = app.create_tenant_from(swiss).await;
    let first = invoices(&app, &swiss).await[0].clone();
    assert_eq!((first["currency"].as_str(), first["subtotal"].as_str()), (Some("CHF"), Some("39.00")));
    let bad =
        app.post("/v1/plans", ADMIN_TOKEN, json!({"code": "nowhere", "name": "Nowhere", "limits": {}, "rate_limit_per_minute": 1})).await;
    assert_eq!(bad.body["error"]["details"]["field"], "monthly_price", "{}", bad.body);
}

#[tokio::test]
async fn a_plans_own_usage_charges_are_billed_in_arrears_and_late_facts_under_them() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let plan = json!({"code": "metered-pro", "name": "Metered Pro", "monthly_price": "49.00",
    "limits": {"api_calls_per_month": 10000}, "rate_limit_per_minute": 500,
    "charges": [
        {"metric": "exports", "model": "graduated", "tiers": [
            {"up_to": 10, "unit_price": "1.00", "flat_fee": "2.00"}, {"up_to": null, "unit_price": "0.50"}]},
        {"metric": "sms", "model": "per_unit", "included": 5, "unit_price": "0.10"}
    ]});
    let bad = app
        .post(
            "/v1/plans",
            ADMIN_TOKEN,
            json!({"code": "broken", "name": "Broken", "monthly_price": "1.00", "limits": {}, "rate_limit_per_minute": 1,
            "charges": [{"metric": "exports", "model": "package", "package_size": 0, "package_price": "1.00"}]}),
        )
        .await;
    bad.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad.body["error"]["details"]["field"], "charges[0]", "{}", bad.body);
    let published = app.post("/v1/plans", ADMIN_TOKEN, plan).await.expect(201).clone();
    assert_eq!(published["charges"][0]["model"], "graduated");
    let tenant = app.create_tenant_on("exporter", "metered-pro").await;
    let starter = app.create_tenant_on("plain", "starter").await;

    app.set_clock("2027-01-20T00:00:00Z").await;
    for (key, metric, quantity) in [("e-1", "exports", 12), ("s-1", "sms", 8), ("a-1", "api_calls", 20_000)] {
        app.post(
            "/v1/usage",
            &tenant.key,
            json!({"metric": metric, "quantity": quantity, "idempotency_key": key, "occurred_at": "2027-01-10T00:00:00Z"}),
        )
        .await
        .expect(202);
    }
    // A metric is known where the plan prices it, and only there.
    app.post("/v1/usage", &starter.key, json!({"metric": "exports", "quantity": 1, "idempotency_key": "x"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage", &tenant.key, json!({"metric": "imports", "quantity": 1, "idempotency_key": "y"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");

    // February's invoice: the fee, API calls beyond 10,000 (built-in: 10 blocks), exports in
    // two graduated tiers (10 × 1.00 + 2.00, 2 × 0.50), SMS beyond 5 at 0.10.
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = invoices(&app, &tenant).await[1].clone();
    assert_eq!(
        money(&february),
        (
            lines(&[("plan", "49.00"), ("overage", "5.00"), ("usage", "12.00"), ("usage", "1.00"), ("usage", "0.30")]),
            totals("67.30", "5.45", "72.75")
        )
    );

    // Three exports of January turn up late: 15 cost 14.50 where 12 cost 13.00.
    app.set_clock("2027-02-10T00:00:00Z").await;
    app.post(
        "/v1/usage",
        &tenant.key,
        json!({"metric": "exports", "quantity": 3, "idempotency_key": "e-late", "occurred_at": "2027-01-20T00:00:00Z"}),
    )
    .await
    .expect(202);
    app.set_clock("2027-03-01T00:00:00Z").await;
    let march = invoices(&app, &tenant).await[2].clone();
    assert_eq!(money(&march), (lines(&[("plan", "49.00"), ("usage", "1.50")]), totals("50.50", "4.09", "54.59")));
    assert!(march["lines"][1]["description"].as_str().unwrap().contains("late usage for 2027-01-01 – 2027-02-01"), "{march}");
}

#[tokio::test]
async fn grace_days_send_reminders_and_a_voided_invoice_ends_dunning() {
    let app = billing_app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("reminded", "starter").await;
    let first = invoices(&app, &tenant).await[0].clone();
    app.payment_webhook(json!({"id": "evt_no", "type": "payment.failed", "invoice_id": first["id"], "amount": first["total"], "currency": first["currency"]}))
        .await
        .expect(200);
    app.set_clock("2027-01-07T12:00:00Z").await;
    // Reminders on days 1, 3 and 6 of the grace period, in the log and in the audit trail.
    let reminders: Vec<(i64, String)> = app
        .all_events()
        .await
        .iter()
        .filter(|e| e["event_type"] == "PaymentReminder")
        .map(|e| (e["payload"]["grace_day"].as_i64().unwrap(), e["payload"]["at"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        reminders,
        [(1, "2027-01-02T00:00:00Z".to_owned()), (3, "2027-01-04T00:00:00Z".to_owned()), (6, "2027-01-07T00:00:00Z".to_owned())]
    );
    let audit = app.get("/v1/audit?limit=100", &tenant.key).await.expect(200).clone();
    let audited = audit["data"].as_array().unwrap().iter().filter(|e| e["event_type"] == "PaymentReminder").count();
    assert_eq!(audited, 3, "{audit}");

    // Voiding the failed invoice ends the dunning: no suspension on day 7.
    let path = format!("/v1/invoices/{}/void", first["id"].as_str().unwrap());
    app.post(&path, &tenant.key, json!({})).await.expect_error(403, "FORBIDDEN");
    let voided = app.post(&path, ADMIN_TOKEN, json!({})).await.expect(200).clone();
    assert_eq!(voided["status"], "void");
    assert_eq!(subscription(&app, &tenant).await["status"], "active");
    app.set_clock("2027-01-09T00:00:00Z").await;
    assert_eq!(subscription(&app, &tenant).await["status"], "active");
    app.post(&path, ADMIN_TOKEN, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    let pay = format!("/v1/invoices/{}/pay", first["id"].as_str().unwrap());
    app.post(&pay, ADMIN_TOKEN, json!({"method": "cash"})).await.expect_error(409, "INVALID_STATE_TRANSITION");
}
