//! The revenue features together: a tenant with seats, a tiered usage charge, a coupon, a
//! credit grant and a credit note, walked through three periods with the test clock, every
//! invoice asserted to the cent; then the billing projection rebuilt reproduces them exactly.

use std::time::{Duration, Instant};

use e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

/// (lines as kind/amount, [subtotal, tax, total, credit_applied, amount_due]).
fn money(invoice: &Value) -> (Vec<(String, String)>, [String; 5]) {
    let lines = invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect();
    (lines, ["subtotal", "tax", "total", "credit_applied", "amount_due"].map(|k| invoice[k].as_str().unwrap().to_owned()))
}

fn expected(lines: &[(&str, &str)], figures: [&str; 5]) -> (Vec<(String, String)>, [String; 5]) {
    (lines.iter().map(|(k, a)| ((*k).to_owned(), (*a).to_owned())).collect(), figures.map(str::to_owned))
}

async fn rebuild_billing(app: &TestApp) {
    let generation = |runs: &Value| {
        runs.as_array().unwrap().iter().find(|r| r["name"] == "billing").map(|r| (r["generation"].as_i64(), r["status"].clone()))
    };
    let before = generation(&app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone()).unwrap().0;
    app.post("/v1/admin/projections/billing/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
        if let Some((after, status)) = generation(&runs) {
            if after > before && status == "live" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn seats_a_tiered_charge_a_coupon_and_credit_over_three_periods_to_the_cent() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    // The contract's graduated example: 1-10 at 10 + flat 2, 11-20 at 5 + flat 3, 21+ at 5 + flat 3.
    app.post(
        "/v1/plans",
        ADMIN_TOKEN,
        json!({"code": "team-pro", "name": "Team Pro", "monthly_price": "40.00", "limits": {"users": 2}, "rate_limit_per_minute": 500,
               "charges": [{"metric": "exports", "model": "graduated", "tiers": [
                   {"up_to": 10, "unit_price": "10.00", "flat_fee": "2.00"},
                   {"up_to": 20, "unit_price": "5.00", "flat_fee": "3.00"},
                   {"up_to": null, "unit_price": "5.00", "flat_fee": "3.00"}]}]}),
    )
    .await
    .expect(201);
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "TEAM10", "percent_off": 10, "duration": "repeating", "duration_in_periods": 2}))
        .await
        .expect(201);
    let mut body = TestApp::tenant_body("studio");
    body["plan"] = json!("team-pro");
    body["tax_rate"] = json!("10");
    body["trial_days"] = json!(0);
    let tenant = app.create_tenant_from(body).await;
    let key = tenant.key.clone();
    assert_eq!(money(&app.invoices(&key).await[0]), expected(&[("plan", "40.00")], ["40.00", "4.00", "44.00", "0.00", "44.00"]));

    app.set_clock("2027-01-02T00:00:00Z").await;
    app.post(&format!("/v1/tenants/{}/credits", tenant.id), ADMIN_TOKEN, json!({"amount": "30.00", "reason": "Welcome"})).await.expect(201);
    app.post("/v1/subscription/coupon", &key, json!({"code": "TEAM10"})).await.expect(200);
    for email in ["a@studio.example", "b@studio.example"] {
        app.post("/v1/members", &key, json!({"email": email, "role": "member"})).await.expect(201);
    }
    app.post("/v1/members", &key, json!({"email": "c@studio.example", "role": "member"})).await.expect_error(429, "QUOTA_EXCEEDED");
    app.put("/v1/subscription/addons", &key, json!({"auto_add_seats": true})).await.expect(200);
    // Jan 16: the third member adds a seat; 16 of 31 days of 5.00 = 2.58 on the next invoice.
    app.set_clock("2027-01-16T00:00:00Z").await;
    app.post(
        "/v1/usage",
        &key,
        json!({"metric": "exports", "quantity": 11, "idempotency_key": "jan", "occurred_at": "2027-01-10T00:00:00Z"}),
    )
    .await
    .expect(202);
    app.post("/v1/members", &key, json!({"email": "c@studio.example", "role": "member"})).await.expect(201);

    // Feb 1: plan, the seat in advance, 11 exports (102.00 + 8.00), the prorated seat; 10 % off
    // 157.58 = 15.76 before tax; 30.00 credit after tax.
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = app.invoices(&key).await[1].clone();
    assert_eq!(
        money(&february),
        expected(
            &[("plan", "40.00"), ("addon", "5.00"), ("usage", "102.00"), ("usage", "8.00"), ("addon", "2.58"), ("discount", "-15.76")],
            ["141.82", "14.18", "156.00", "30.00", "126.00"]
        )
    );
    // Paid by bank transfer, then 10.00 credited back (11.00 with tax, to the balance).
    app.set_clock("2027-02-05T00:00:00Z").await;
    let february_id = february["id"].as_str().unwrap();
    app.post(&format!("/v1/invoices/{february_id}/pay"), ADMIN_TOKEN, json!({"method": "bank_transfer", "reference": "SEPA-1"}))
        .await
        .expect(200);
    let note = app
        .post(&format!("/v1/invoices/{february_id}/credit-notes"), ADMIN_TOKEN, json!({"amount": "10.00", "reason": "Export outage"}))
        .await;
    assert_eq!(note.expect(201)["number"], "CN-STUDIO-000001");
    app.set_clock("2027-02-12T00:00:00Z").await;
    app.post(
        "/v1/usage",
        &key,
        json!({"metric": "exports", "quantity": 21, "idempotency_key": "feb", "occurred_at": "2027-02-10T00:00:00Z"}),
    )
    .await
    .expect(202);

    // Mar 1: 21 exports = 102.00 + 53.00 + 8.00; the coupon's second and last invoice; 11.00 credit.
    app.set_clock("2027-03-01T00:00:00Z").await;
    let march = app.invoices(&key).await[2].clone();
    assert_eq!(
        money(&march),
        expected(
            &[("plan", "40.00"), ("addon", "5.00"), ("usage", "102.00"), ("usage", "53.00"), ("usage", "8.00"), ("discount", "-20.80")],
            ["187.20", "18.72", "205.92", "11.00", "194.92"]
        )
    );
    // Apr 1: no usage, no coupon, no credit left.
    app.set_clock("2027-04-01T00:00:00Z").await;
    let april = app.invoices(&key).await[3].clone();
    assert_eq!(money(&april), expected(&[("plan", "40.00"), ("addon", "5.00")], ["45.00", "4.50", "49.50", "0.00", "49.50"]));
    let ledger = app.get("/v1/credits", &key).await.expect(200).clone();
    let amounts: Vec<&str> = ledger["transactions"].as_array().unwrap().iter().map(|t| t["amount"].as_str().unwrap()).collect();
    assert_eq!((ledger["balance"].as_str(), amounts), (Some("0.00"), vec!["30.00", "-30.00", "11.00", "-11.00"]));

    // A rebuild of the billing projection reproduces every invoice, credit note and ledger entry.
    let before = (app.invoices(&key).await, ledger);
    rebuild_billing(&app).await;
    let after = (app.invoices(&key).await, app.get("/v1/credits", &key).await.expect(200).clone());
    assert_eq!(before, after);
    assert_eq!(after.0[1]["credit_notes"][0]["total"], "11.00");
}
