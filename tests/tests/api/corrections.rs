//! Usage corrections through HTTP with the test clock: void and amend by idempotency key (the
//! original fact kept, each correction audited), quota at once, invoiced periods corrected on the
//! next invoice as late usage is (negative lines allowed, never a negative invoice: the excess
//! and its tax become credit balance), under the period's own terms after an upgrade; 20
//! concurrent voids of one fact; the 35-day limit; rebuilds and the simulation agree.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

use crate::late_usage::{lines, pairs};

async fn record(app: &TestApp, tenant: &TestTenant, metric: &str, quantity: u64, key: &str, occurred_at: &str) {
    app.post("/v1/usage", &tenant.key, json!({"metric": metric, "quantity": quantity, "idempotency_key": key, "occurred_at": occurred_at}))
        .await
        .expect(202);
}

async fn api_calls_used(app: &TestApp, tenant: &TestTenant) -> i64 {
    app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].as_i64().unwrap()
}

#[tokio::test]
async fn a_voided_fact_of_an_invoiced_period_is_credited_on_the_next_invoice_and_an_amendment_billed_under_its_periods_terms() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_tenant_on("fixing-calls", "starter").await; // 10,000 calls included, 0.50 per started 1,000
    app.set_clock("2027-01-20T00:00:00Z").await;
    record(&app, &tenant, "api_calls", 2_001, "jan-2", "2027-01-16T10:00:00Z").await;
    app.set_clock("2027-01-31T12:00:00Z").await;
    record(&app, &tenant, "api_calls", 10_000, "jan-1", "2027-01-31T10:00:00Z").await;
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = app.invoices(&tenant.key).await[1].clone();
    assert_eq!(lines(&february), pairs(&[("plan", "29.00"), ("overage", "1.50")]), "12,001 calls: 3 started blocks");

    // A fact of the current period, voided: the quota shows it at once.
    record(&app, &tenant, "api_calls", 700, "feb-1", "2027-02-01T00:00:00Z").await;
    assert_eq!(api_calls_used(&app, &tenant).await, 700);
    let voided = app.post("/v1/usage/feb-1/void", &tenant.key, json!({"reason": "Sent by a test client"})).await;
    let voided = voided.expect(200).clone();
    assert_eq!((voided["status"].as_str(), voided["quantity"].as_str()), (Some("void"), Some("0")), "{voided}");
    assert_eq!(voided["corrections"][0]["previous_quantity"], "700");
    assert_eq!(voided["corrections"][0]["reason"], "Sent by a test client");
    assert_eq!(api_calls_used(&app, &tenant).await, 0, "the quota reflects the void at once");

    // January's 2,001 voided: March's invoice has the difference, −1.50, naming January.
    app.set_clock("2027-02-10T00:00:00Z").await;
    app.post("/v1/usage/jan-2/void", &tenant.key, json!({"reason": "Counted twice"})).await.expect(200);
    let read = app.get("/v1/usage/jan-2", &tenant.key).await.expect(200).clone();
    assert_eq!((read["status"].as_str(), read["metric"].as_str()), (Some("void"), Some("api_calls")));
    assert!(read["corrections"][0]["actor"].as_str().unwrap().starts_with("key:"), "{read}");
    app.post("/v1/usage/jan-2/void", &tenant.key, json!({"reason": "again"})).await.expect_error(409, "CONFLICT");
    app.post("/v1/usage/jan-2/amend", &tenant.key, json!({"quantity": 5, "reason": "x"})).await.expect_error(409, "CONFLICT");
    app.set_clock("2027-03-01T00:00:00Z").await;
    let march = app.invoices(&tenant.key).await[2].clone();
    assert_eq!(lines(&march), pairs(&[("plan", "29.00"), ("overage", "-1.50")]));
    assert!(march["lines"][1]["description"].as_str().unwrap().contains("usage corrected for 2027-01-01 – 2027-02-01"), "{march}");
    assert_eq!(march["subtotal"], "27.50");

    // An amendment up and down after an upgrade is billed under January's terms (10,000 included).
    app.set_clock("2027-03-02T00:00:00Z").await;
    record(&app, &tenant, "api_calls", 100, "feb-late", "2027-02-20T00:00:00Z").await;
    app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "professional"})).await.expect(200);
    app.set_clock("2027-03-03T00:00:00Z").await;
    let up = app.post("/v1/usage/jan-1/amend", &tenant.key, json!({"quantity": 12_500, "reason": "Meter under-counted"})).await;
    assert_eq!(up.expect(200)["quantity"], "12500");
    app.set_clock("2027-03-04T00:00:00Z").await;
    let down = app.post("/v1/usage/jan-1/amend", &tenant.key, json!({"quantity": 11_200, "reason": "Half of it was retries"})).await;
    let down = down.expect(200).clone();
    assert_eq!((down["status"].as_str(), down["corrections"].as_array().unwrap().len()), (Some("amended"), 2), "{down}");
    app.set_clock("2027-04-01T00:00:00Z").await;
    let all = app.invoices(&tenant.key).await;
    // January now has 11,200 calls: 2 started blocks beyond 10,000 = 1.00, billed 0.00 since the void.
    let corrected: Vec<(String, String)> = all[3..]
        .iter()
        .flat_map(|i| i["lines"].as_array().unwrap().clone())
        .filter(|l| l["description"].as_str().unwrap().contains("2027-01-01 – 2027-02-01"))
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(corrected, pairs(&[("overage", "1.00")]), "{all:?}");

    // Bad input and unknown facts: a clear 4xx.
    app.post("/v1/usage/no-such-key/void", &tenant.key, json!({"reason": "x"})).await.expect_error(404, "NOT_FOUND");
    app.get("/v1/usage/no-such-key", &tenant.key).await.expect_error(404, "NOT_FOUND");
    app.post("/v1/usage/jan-1/amend", &tenant.key, json!({"quantity": -1, "reason": "x"})).await.expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage/jan-1/amend", &tenant.key, json!({"quantity": 1, "reason": ""})).await.expect_error(400, "VALIDATION_FAILED");
    let member = app.issue_key(&tenant.key, "member").await;
    app.post("/v1/usage/jan-1/void", &member, json!({"reason": "x"})).await.expect_error(403, "FORBIDDEN");
    // 35 days after it occurred, a fact can no longer be corrected.
    app.set_clock("2027-04-10T00:00:00Z").await;
    let late = app.post("/v1/usage/feb-late/void", &tenant.key, json!({"reason": "too late"})).await;
    late.expect_error(409, "CONFLICT");
    assert_eq!(late.body["error"]["details"]["field"], "occurred_at");

    // The audit trail has each correction; the usage read model rebuilt counts the same.
    let audit = app.get("/v1/audit?aggregate_type=UsageCorrection&limit=100", &tenant.key).await.expect(200).clone();
    let kinds: Vec<&str> = audit["data"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "UsageVoided").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "UsageAmended").count(), 2, "{kinds:?}");
    let before = series(&app, &tenant).await;
    assert!(before.to_string().contains("11200"), "January counts 11,200 calls: {before}");
    rebuild(&app, "usage").await;
    assert_eq!(series(&app, &tenant).await, before);

    // The simulation re-runs the real billing: corrections included, every difference 0.00.
    simulation_differs_nowhere(&app, "2027-01-01T00:00:00Z", "2027-05-01T00:00:00Z").await;
}

/// Runs a simulation with no candidate plans over `[from, to)` and asserts every month's
/// difference is 0.00 (the real billing, re-run).
pub(crate) async fn simulation_differs_nowhere(app: &TestApp, from: &str, to: &str) {
    let sim = app.post("/v1/admin/simulations", ADMIN_TOKEN, json!({"from": from, "to": to, "plans": []})).await.expect(202).clone();
    let id = sim["id"].as_str().unwrap().to_owned();
    let done = loop {
        let s = app.get(&format!("/v1/admin/simulations/{id}"), ADMIN_TOKEN).await.expect(200).clone();
        if s["status"] != "running" {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "done", "{done}");
    for month in done["result"]["by_month"].as_array().unwrap() {
        assert_eq!(month["difference"], "0.00", "{done}");
    }
}

async fn series(app: &TestApp, tenant: &TestTenant) -> Value {
    let path = "/v1/usage?metric=api_calls&from=2027-01-01T00:00:00Z&to=2027-03-01T00:00:00Z&granularity=month";
    app.get(path, &tenant.key).await.expect(200).clone()
}

/// Rebuilds projection `name` and waits until the new generation is live.
pub(crate) async fn rebuild(app: &TestApp, name: &str) {
    let generation = |runs: &Value| runs.as_array().unwrap().iter().find(|r| r["name"] == name).map(|r| r["generation"].as_i64().unwrap());
    let before = generation(&app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone()).unwrap();
    app.post(&format!("/v1/admin/projections/{name}/rebuild"), ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
        if runs.as_array().unwrap().iter().any(|r| r["name"] == name && r["generation"].as_i64().unwrap() > before && r["status"] == "live")
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish: {runs}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_correction_beyond_the_next_invoice_becomes_credit_with_its_tax_and_of_20_concurrent_voids_one_succeeds() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    app.post(
        "/v1/plans",
        ADMIN_TOKEN,
        json!({"code": "exporter", "name": "Exporter", "monthly_price": "5.00", "limits": {"users": 2}, "rate_limit_per_minute": 500,
               "charges": [{"metric": "exports", "model": "per_unit", "unit_price": "10.00"}]}),
    )
    .await
    .expect(201);
    let tenant = app.create_billed_tenant("fixing-exports", "exporter").await; // tax 10 %
    app.set_clock("2027-01-20T00:00:00Z").await;
    record(&app, &tenant, "exports", 10, "big-export", "2027-01-10T00:00:00Z").await;
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = app.invoices(&tenant.key).await[1].clone();
    assert_eq!(lines(&february), pairs(&[("plan", "5.00"), ("usage", "100.00")]));

    // 20 voids at once: exactly one succeeds, the others are 409 CONFLICT.
    app.set_clock("2027-02-02T00:00:00Z").await;
    let voids = futures::future::join_all(
        (0..20).map(|i| app.post("/v1/usage/big-export/void", &tenant.key, json!({"reason": format!("duplicate export {i}")}))),
    )
    .await;
    let ok = voids.iter().filter(|r| r.status.as_u16() == 200).count();
    assert_eq!(ok, 1, "{:?}", voids.iter().map(|r| (r.status, r.body.clone())).collect::<Vec<_>>());
    for refused in voids.iter().filter(|r| r.status.as_u16() != 200) {
        assert_eq!(refused.status.as_u16(), 409, "{}", refused.body);
    }

    // March: 5.00 − 100.00 → the invoice is 0.00, and 95.00 plus its 9.50 tax is credit balance.
    app.set_clock("2027-03-01T00:00:00Z").await;
    let march = app.invoices(&tenant.key).await[2].clone();
    assert_eq!(lines(&march), pairs(&[("plan", "5.00"), ("usage", "-100.00"), ("credit", "95.00")]));
    assert_eq!((march["subtotal"].as_str(), march["total"].as_str()), (Some("0.00"), Some("0.00")));
    let credits = app.get("/v1/credits", &tenant.key).await.expect(200).clone();
    assert_eq!(credits["balance"], "104.50", "{credits}");
    let entries = credits["transactions"].as_array().unwrap().clone();
    assert!(entries.iter().any(|e| e["amount"] == "104.50" && e["reason"].as_str().unwrap().contains("correction")), "{credits}");
    // April's invoice is paid from it.
    app.set_clock("2027-04-01T00:00:00Z").await;
    let april = app.invoices(&tenant.key).await[3].clone();
    assert_eq!(
        (april["total"].as_str(), april["credit_applied"].as_str(), april["amount_due"].as_str()),
        (Some("5.50"), Some("5.50"), Some("0.00"))
    );
}
