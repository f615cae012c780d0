//! Late usage: facts that arrive after their period was invoiced are billed on the next
//! invoice (or a final one), within a 35-day window; older ones are refused.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

async fn invoices(app: &TestApp, tenant: &TestTenant) -> Vec<Value> {
    app.invoices(&tenant.key).await
}

/// `(kind, amount)` of each line.
pub(crate) fn lines(invoice: &Value) -> Vec<(String, String)> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect()
}

/// `(kind, amount)` pairs as owned strings.
pub(crate) fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(k, a)| ((*k).to_owned(), (*a).to_owned())).collect()
}

async fn record(app: &TestApp, tenant: &TestTenant, quantity: u64, key: &str, occurred_at: &str) -> e2e::Reply {
    app.post(
        "/v1/usage",
        &tenant.key,
        json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": key, "occurred_at": occurred_at}),
    )
    .await
}

async fn rebuild_billing(app: &TestApp) {
    let before = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
    let generation = before.as_array().unwrap().iter().find(|r| r["name"] == "billing").unwrap()["generation"].as_i64().unwrap();
    app.post("/v1/admin/projections/billing/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).as_array().unwrap().clone();
        if runs.iter().any(|r| r["name"] == "billing" && r["generation"].as_i64() > Some(generation) && r["status"] == "live") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish: {runs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn late_calls_for_an_invoiced_period_are_billed_once_on_the_next_invoice_and_old_ones_refused() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("late-calls", "starter").await; // 10,000 calls a month included, tax 8.1 %
    app.set_clock("2027-01-20T00:00:00Z").await;
    record(&app, &tenant, 10_000, "jan", "2027-01-15T10:00:00Z").await.expect(202);
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = invoices(&app, &tenant).await[1].clone();
    assert_eq!(lines(&february), pairs(&[("plan", "29.00")]), "exactly the allowance: no overage");

    // 2,001 calls for January turn up late, one of them sent twice.
    app.set_clock("2027-02-10T00:00:00Z").await;
    assert_eq!(record(&app, &tenant, 2_000, "jan-late-1", "2027-01-20T08:00:00Z").await.expect(202)["duplicate"], false);
    assert_eq!(record(&app, &tenant, 1, "jan-late-2", "2027-01-31T23:59:59Z").await.expect(202)["duplicate"], false);
    assert_eq!(record(&app, &tenant, 1, "jan-late-2", "2027-01-31T23:59:59Z").await.expect(202)["duplicate"], true);
    // 36 days old: refused, naming the field and the window.
    let old = record(&app, &tenant, 5, "too-old", "2027-01-05T00:00:00Z").await;
    old.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(old.body["error"]["details"]["field"], "occurred_at", "{}", old.body);
    assert!(old.body["error"]["message"].as_str().unwrap().contains("35 days"), "{}", old.body);
    // The same through the batch endpoint: refused on its own, the rest accepted.
    let batch = app
        .post(
            "/v1/usage/batch",
            &tenant.key,
            json!({"records": [
                {"metric": "api_calls", "quantity": 5, "idempotency_key": "batch-old", "occurred_at": "2027-01-05T00:00:00Z"},
                {"metric": "sms", "quantity": 2, "idempotency_key": "batch-late-sms", "occurred_at": "2027-01-30T00:00:00Z"}
            ]}),
        )
        .await
        .expect(202)
        .clone();
    assert_eq!((batch["accepted"].as_u64(), batch["refused"].as_u64()), (Some(1), Some(1)), "{batch}");
    assert_eq!(batch["results"][0]["error"]["details"]["field"], "occurred_at", "{batch}");

    // March's invoice: its plan fee, then January's late usage under January's terms:
    // 12,001 calls on 10,000 included → 3 started blocks (1.50), none billed before; 2 SMS.
    app.set_clock("2027-03-01T00:00:00Z").await;
    let all = invoices(&app, &tenant).await;
    assert_eq!(all.len(), 3);
    let march = &all[2];
    assert_eq!(lines(march), pairs(&[("plan", "29.00"), ("overage", "1.50"), ("overage", "0.10")]));
    for line in &march["lines"].as_array().unwrap()[1..] {
        let description = line["description"].as_str().unwrap();
        assert!(description.contains("late usage for 2027-01-01 – 2027-02-01"), "{description}");
    }
    let sum: rust_decimal::Decimal =
        march["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap()).sum();
    assert_eq!(sum.to_string(), march["subtotal"].as_str().unwrap());
    assert_eq!((march["subtotal"].as_str(), march["tax"].as_str(), march["total"].as_str()), (Some("30.60"), Some("2.48"), Some("33.08")));

    // Billing again bills nothing twice.
    let again = app.post("/v1/admin/billing/run", ADMIN_TOKEN, json!({})).await.expect(200).clone();
    assert_eq!(again["invoices_issued"], 0, "{again}");
    app.set_clock("2027-04-01T00:00:00Z").await;
    let all = invoices(&app, &tenant).await;
    assert_eq!(lines(&all[3]), pairs(&[("plan", "29.00")]));

    // The billing read model rebuilt from the log has the same invoices.
    rebuild_billing(&app).await;
    assert_eq!(invoices(&app, &tenant).await, all);
}

#[tokio::test]
async fn late_usage_of_a_cancelled_subscription_gets_a_final_invoice() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("late-leaver", "starter").await;
    app.set_clock("2027-02-01T00:00:00Z").await;
    app.set_clock("2027-02-10T00:00:00Z").await;
    app.post("/v1/subscription/cancel", &tenant.key, json!({"at_period_end": false})).await.expect(200);
    assert_eq!(invoices(&app, &tenant).await.len(), 2, "nothing used: no invoice at cancellation");

    // The tenant's metering catches up after the cancellation: usage of its last days is
    // still accepted (and billed), usage after it is not.
    app.set_clock("2027-02-15T00:00:00Z").await;
    record(&app, &tenant, 10_001, "feb-late", "2027-02-05T00:00:00Z").await.expect(202);
    record(&app, &tenant, 1, "after", "2027-02-11T00:00:00Z").await.expect_error(403, "TENANT_CANCELLED");
    app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": "now"}))
        .await
        .expect_error(403, "TENANT_CANCELLED");
    app.post("/v1/bookings", &tenant.key, json!({})).await.expect_error(403, "TENANT_CANCELLED");

    // The next billing run issues a final invoice for it: 10,001 on 10,000 → one block.
    app.set_clock("2027-02-16T00:00:00Z").await;
    let all = invoices(&app, &tenant).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(lines(&all[2]), pairs(&[("overage", "0.50")]));
    assert_eq!((all[2]["number"].as_str(), all[2]["total"].as_str()), (Some("LATE-LEAVER-000003"), Some("0.54")));
    assert!(all[2]["lines"][0]["description"].as_str().unwrap().contains("2027-02-01 – 2027-02-10"), "{}", all[2]);
    app.set_clock("2027-02-17T00:00:00Z").await;
    assert_eq!(invoices(&app, &tenant).await.len(), 3, "billed once");
    assert_eq!(app.get("/v1/subscription", &tenant.key).await.expect(200)["status"], "cancelled");
}
