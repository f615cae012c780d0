//! Account credit and credit notes end to end: grants applied after tax, expiry, the ledger a
//! tenant reads, credit notes on open and paid invoices, and their refusals.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN, WEBHOOK_SECRET};
use serde_json::{json, Value};

async fn app() -> TestApp {
    spawn_app_with(|c| {
        c.test_clock = true;
        c.webhook_secret = Some(WEBHOOK_SECRET.to_owned());
    })
    .await
}

/// A tenant on starter with 10 % tax and no trial: invoice 1 (29.00 + 2.90) is issued at once.
async fn tenant(app: &TestApp, code: &str) -> TestTenant {
    app.create_billed_tenant(code, "starter").await
}

async fn invoices(app: &TestApp, tenant: &TestTenant) -> Vec<Value> {
    app.invoices(&tenant.key).await
}

/// (subtotal, tax, total, credit_applied, amount_due, status).
fn due(invoice: &Value) -> [String; 6] {
    ["subtotal", "tax", "total", "credit_applied", "amount_due", "status"].map(|k| invoice[k].as_str().unwrap().to_owned())
}

fn strings(values: [&str; 6]) -> [String; 6] {
    values.map(str::to_owned)
}

#[tokio::test]
async fn granted_credit_is_applied_after_tax_and_the_tenant_reads_its_ledger() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "credited").await;
    assert_eq!(due(&invoices(&app, &tenant).await[0]), strings(["29.00", "2.90", "31.90", "0.00", "31.90", "open"]));

    let path = format!("/v1/tenants/{}/credits", tenant.id);
    let granted = app.post(&path, ADMIN_TOKEN, json!({"amount": "40.00", "reason": "Goodwill"})).await.expect(201).clone();
    assert_eq!((granted["amount"].as_str(), granted["balance"].as_str()), (Some("40.00"), Some("40.00")));
    app.post(&path, ADMIN_TOKEN, json!({"amount": "5.00", "reason": "Promo", "expires_at": "2027-03-15T00:00:00Z"})).await.expect(201);
    // Only the admin grants; bad amounts and dates are refused.
    app.post(&path, &tenant.key, json!({"amount": "1.00", "reason": "me"})).await.expect_error(403, "FORBIDDEN");
    for (body, field) in [
        (json!({"amount": "0", "reason": "x"}), "amount"),
        (json!({"amount": "-1.00", "reason": "x"}), "amount"),
        (json!({"amount": "1.005", "reason": "x"}), "amount"),
        (json!({"amount": "ten", "reason": "x"}), "amount"),
        (json!({"amount": "1.00", "reason": ""}), "reason"),
        (json!({"amount": "1.00", "reason": "x", "expires_at": "2026-01-01T00:00:00Z"}), "expires_at"),
    ] {
        let refused = app.post(&path, ADMIN_TOKEN, body.clone()).await;
        refused.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(refused.body["error"]["details"]["field"], field, "{body}");
    }

    // Feb 1: 31.90 is covered by the expiring grant first (5.00), then 26.90 of the other.
    app.set_clock("2027-02-01T00:00:00Z").await;
    let second = invoices(&app, &tenant).await[1].clone();
    assert_eq!(due(&second), strings(["29.00", "2.90", "31.90", "31.90", "0.00", "paid"]));
    assert_eq!(second["paid_at"], "2027-02-01T00:00:00Z");
    // Mar 1: 13.10 left, applied after tax.
    app.set_clock("2027-03-01T00:00:00Z").await;
    let third = invoices(&app, &tenant).await[2].clone();
    assert_eq!(due(&third), strings(["29.00", "2.90", "31.90", "13.10", "18.80", "open"]));

    let ledger = app.get("/v1/credits", &tenant.key).await.expect(200).clone();
    assert_eq!((ledger["balance"].as_str(), ledger["currency"].as_str()), (Some("0.00"), Some("EUR")));
    let entries: Vec<(String, Option<String>)> = ledger["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["amount"].as_str().unwrap().to_owned(), t["invoice_id"].as_str().map(str::to_owned)))
        .collect();
    let (second_id, third_id) = (second["id"].as_str().map(str::to_owned), third["id"].as_str().map(str::to_owned));
    assert_eq!(entries, [("40.00".into(), None), ("5.00".into(), None), ("-31.90".into(), second_id), ("-13.10".into(), third_id)]);
    // Paying what is due (not the total) pays the invoice.
    let paid =
        app.post(&format!("/v1/invoices/{}/pay", third["id"].as_str().unwrap()), ADMIN_TOKEN, json!({"method": "bank_transfer"})).await;
    assert_eq!(paid.expect(200)["status"], "paid");
}

#[tokio::test]
async fn unused_credit_expires_and_the_ledger_says_so() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "expiring").await;
    let path = format!("/v1/tenants/{}/credits", tenant.id);
    app.post(&path, ADMIN_TOKEN, json!({"amount": "20.00", "reason": "Trial extension", "expires_at": "2027-01-20T00:00:00Z"}))
        .await
        .expect(201);
    assert_eq!(app.get("/v1/credits", &tenant.key).await.expect(200)["balance"], "20.00");
    app.set_clock("2027-02-01T00:00:00Z").await;
    assert_eq!(due(&invoices(&app, &tenant).await[1]), strings(["29.00", "2.90", "31.90", "0.00", "31.90", "open"]));
    let ledger = app.get("/v1/credits", &tenant.key).await.expect(200).clone();
    assert_eq!(ledger["balance"], "0.00");
    let last = ledger["transactions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["amount"].as_str(), last["reason"].as_str(), last["created_at"].as_str()),
        (Some("-20.00"), Some("Expired"), Some("2027-01-20T00:00:00Z"))
    );
}

#[tokio::test]
async fn credit_notes_lower_what_is_due_or_credit_the_balance_and_never_exceed_the_subtotal() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "noted").await;
    let first = invoices(&app, &tenant).await[0].clone();
    let notes = format!("/v1/invoices/{}/credit-notes", first["id"].as_str().unwrap());

    let note = app.post(&notes, ADMIN_TOKEN, json!({"amount": "10.00", "reason": "Outage"})).await.expect(201).clone();
    assert_eq!(note["number"], "CN-NOTED-000001");
    assert_eq!(note["invoice_id"], first["id"]);
    assert_eq!([&note["subtotal"], &note["tax"], &note["total"]], [&json!("10.00"), &json!("1.00"), &json!("11.00")]);
    let invoice = app.get(&format!("/v1/invoices/{}", first["id"].as_str().unwrap()), &tenant.key).await.expect(200).clone();
    assert_eq!(due(&invoice), strings(["29.00", "2.90", "31.90", "0.00", "20.90", "open"]));
    assert_eq!(invoice["credit_notes"].as_array().unwrap().len(), 1);
    assert_eq!(invoice["credit_notes"][0]["number"], "CN-NOTED-000001");

    // 19.01 more would exceed the 29.00 subtotal.
    let refused = app.post(&notes, ADMIN_TOKEN, json!({"amount": "19.01", "reason": "Too much"})).await;
    refused.expect_error(409, "CONFLICT");
    assert_eq!(refused.body["error"]["details"]["subtotal"], "29.00");
    app.post(&notes, &tenant.key, json!({"amount": "1.00", "reason": "me"})).await.expect_error(403, "FORBIDDEN");
    app.post(&notes, ADMIN_TOKEN, json!({"amount": "0.00", "reason": "x"})).await.expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/invoices/00000000-0000-0000-0000-000000000000/credit-notes", ADMIN_TOKEN, json!({"amount": "1.00", "reason": "x"}))
        .await
        .expect_error(404, "NOT_FOUND");

    // Pay the rest, then credit 5.00 more: its total goes to the balance and the next invoice.
    let paid = app.post(&format!("/v1/invoices/{}/pay", first["id"].as_str().unwrap()), ADMIN_TOKEN, json!({"method": "cash"})).await;
    assert_eq!(paid.expect(200)["status"], "paid");
    let second_note = app.post(&notes, ADMIN_TOKEN, json!({"amount": "5.00", "reason": "Late fix"})).await.expect(201).clone();
    assert_eq!(second_note["number"], "CN-NOTED-000002");
    assert_eq!(app.get("/v1/credits", &tenant.key).await.expect(200)["balance"], "5.50");
    app.set_clock("2027-02-01T00:00:00Z").await;
    let second = invoices(&app, &tenant).await[1].clone();
    assert_eq!(due(&second), strings(["29.00", "2.90", "31.90", "5.50", "26.40", "open"]));

    // A credit note that settles an open invoice pays it; a void invoice takes none.
    let second_notes = format!("/v1/invoices/{}/credit-notes", second["id"].as_str().unwrap());
    app.post(&second_notes, ADMIN_TOKEN, json!({"amount": "24.00", "reason": "Full refund"})).await.expect(201);
    let settled = app.get(&format!("/v1/invoices/{}", second["id"].as_str().unwrap()), &tenant.key).await.expect(200).clone();
    assert_eq!(due(&settled), strings(["29.00", "2.90", "31.90", "5.50", "0.00", "paid"]));
    assert_eq!(app.get("/v1/credits", &tenant.key).await.expect(200)["balance"], "0.00", "26.40 settled, nothing over");
    app.set_clock("2027-03-01T00:00:00Z").await;
    let third = invoices(&app, &tenant).await[2].clone();
    app.post(&format!("/v1/invoices/{}/void", third["id"].as_str().unwrap()), ADMIN_TOKEN, json!({})).await.expect(200);
    app.post(
        &format!("/v1/invoices/{}/credit-notes", third["id"].as_str().unwrap()),
        ADMIN_TOKEN,
        json!({"amount": "1.00", "reason": "x"}),
    )
    .await
    .expect_error(409, "INVALID_STATE_TRANSITION");
}
