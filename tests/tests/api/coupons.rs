//! Coupons end to end: created by the admin, redeemed by tenants, discounts before tax on the
//! invoices they last for, refusals, and `max_redemptions` exact under concurrency.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

async fn app() -> TestApp {
    spawn_app_with(|c| c.test_clock = true).await
}

async fn tenant(app: &TestApp, code: &str, plan: &str) -> TestTenant {
    app.create_billed_tenant(code, plan).await
}

async fn invoices(app: &TestApp, tenant: &TestTenant) -> Vec<Value> {
    app.invoices(&tenant.key).await
}

fn lines(invoice: &Value) -> Vec<(String, String)> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

fn refused(reply: &e2e::Reply, reason: &str) {
    reply.expect_error(409, "COUPON_NOT_APPLICABLE");
    assert_eq!(reply.body["error"]["details"]["reason"], reason, "{}", reply.body);
}

#[tokio::test]
async fn a_coupon_discounts_the_invoices_it_lasts_for_before_tax() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let created = app
        .post(
            "/v1/coupons",
            ADMIN_TOKEN,
            json!({"code": "SPRING20", "percent_off": 20, "duration": "repeating", "duration_in_periods": 2, "plans": ["starter", "professional"]}),
        )
        .await
        .expect(201)
        .clone();
    assert_eq!(
        (created["percent_off"].as_f64(), created["times_redeemed"].as_i64(), created["valid"].as_bool()),
        (Some(20.0), Some(0), Some(true))
    );
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "SPRING20", "percent_off": 5, "duration": "once"}))
        .await
        .expect_error(409, "CONFLICT");
    for (body, field) in [
        (json!({"code": "X", "percent_off": 5, "duration": "once"}), "code"),
        (json!({"code": "BAD1", "percent_off": 120, "duration": "once"}), "percent_off"),
        (json!({"code": "BAD2", "percent_off": 5, "amount_off": "1.00", "currency": "EUR", "duration": "once"}), "percent_off"),
        (json!({"code": "BAD3", "amount_off": "1.00", "duration": "once"}), "currency"),
        (json!({"code": "BAD4", "percent_off": 5, "duration": "repeating"}), "duration_in_periods"),
        (json!({"code": "BAD5", "percent_off": 5, "duration": "sometimes"}), "duration"),
        (json!({"code": "BAD6", "percent_off": 5, "duration": "once", "plans": ["gold"]}), "plans"),
        (json!({"code": "BAD7", "percent_off": 5, "duration": "once", "max_redemptions": 0}), "max_redemptions"),
    ] {
        let reply = app.post("/v1/coupons", ADMIN_TOKEN, body.clone()).await;
        reply.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
    }
    let tenant = tenant(&app, "couponed", "starter").await;
    app.post("/v1/coupons", &tenant.key, json!({"code": "MINE", "percent_off": 5, "duration": "once"}))
        .await
        .expect_error(403, "FORBIDDEN");

    let sub = app.post("/v1/subscription/coupon", &tenant.key, json!({"code": "SPRING20"})).await.expect(200).clone();
    assert_eq!((sub["discount"]["coupon"].as_str(), sub["discount"]["invoices_left"].as_i64()), (Some("SPRING20"), Some(2)));
    assert_eq!(sub["discount"]["ends_at_period"], "2027-04-01T00:00:00Z");
    refused(&app.post("/v1/subscription/coupon", &tenant.key, json!({"code": "SPRING20"})).await, "already_active");
    refused(&app.post("/v1/subscription/coupon", &tenant.key, json!({"code": "NOPE"})).await, "unknown");
    assert_eq!(app.get("/v1/coupons/SPRING20", ADMIN_TOKEN).await.expect(200)["times_redeemed"], 1);

    // Feb 1 and Mar 1: 20 % off before tax; Apr 1: full price.
    app.set_clock("2027-04-01T00:00:00Z").await;
    let all = invoices(&app, &tenant).await;
    assert_eq!(lines(&all[1]), pairs(&[("plan", "29.00"), ("discount", "-5.80")]));
    assert_eq!([&all[1]["subtotal"], &all[1]["tax"], &all[1]["total"]], [&json!("23.20"), &json!("2.32"), &json!("25.52")]);
    assert_eq!(lines(&all[2]), lines(&all[1]));
    assert_eq!(lines(&all[3]), pairs(&[("plan", "29.00")]));
    assert!(app.get("/v1/subscription", &tenant.key).await.expect(200)["discount"].is_null());

    // A fixed amount, forever, never below zero; removed, it stops at the next invoice.
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "FIFTY", "amount_off": "50.00", "currency": "EUR", "duration": "forever"}))
        .await
        .expect(201);
    app.post("/v1/subscription/coupon", &tenant.key, json!({"code": "FIFTY"})).await.expect(200);
    app.set_clock("2027-05-01T00:00:00Z").await;
    let may = invoices(&app, &tenant).await[4].clone();
    assert_eq!(lines(&may), pairs(&[("plan", "29.00"), ("discount", "-29.00")]));
    assert_eq!((may["total"].as_str(), may["status"].as_str()), (Some("0.00"), Some("paid")));
    app.delete("/v1/subscription/coupon", &tenant.key).await.expect(200);
    app.delete("/v1/subscription/coupon", &tenant.key).await.expect_error(409, "CONFLICT");
    app.set_clock("2027-06-01T00:00:00Z").await;
    assert_eq!(lines(&invoices(&app, &tenant).await[5]), pairs(&[("plan", "29.00")]));

    // Restricted to plans, to a currency, and to a date.
    let business = self::tenant(&app, "big-spender", "business").await;
    refused(&app.post("/v1/subscription/coupon", &business.key, json!({"code": "SPRING20"})).await, "plan");
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "USD5", "amount_off": "5.00", "currency": "USD", "duration": "once"}))
        .await
        .expect(201);
    refused(&app.post("/v1/subscription/coupon", &business.key, json!({"code": "USD5"})).await, "currency");
    app.post(
        "/v1/coupons",
        ADMIN_TOKEN,
        json!({"code": "JUNE", "percent_off": "10", "duration": "once", "redeem_by": "2027-06-15T00:00:00Z"}),
    )
    .await
    .expect(201);
    app.set_clock("2027-06-16T00:00:00Z").await;
    refused(&app.post("/v1/subscription/coupon", &business.key, json!({"code": "JUNE"})).await, "expired");
    assert_eq!(app.get("/v1/coupons/JUNE", ADMIN_TOKEN).await.expect(200)["valid"], false);
    let listed = app.get("/v1/coupons?limit=2", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert_eq!(listed["has_more"], true);
    app.get("/v1/coupons/NOPE", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_tenants_racing_for_five_redemptions_get_exactly_five() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    app.post("/v1/coupons", ADMIN_TOKEN, json!({"code": "FIRST5", "percent_off": 50, "duration": "once", "max_redemptions": 5}))
        .await
        .expect(201);
    let mut tenants = Vec::new();
    for i in 0..20 {
        tenants.push(tenant(&app, &format!("racer-{i}"), "starter").await);
    }
    let replies =
        futures::future::join_all(tenants.iter().map(|t| app.post("/v1/subscription/coupon", &t.key, json!({"code": "FIRST5"})))).await;
    let won = replies.iter().filter(|r| r.status.as_u16() == 200).count();
    for reply in replies.iter().filter(|r| r.status.as_u16() != 200) {
        refused(reply, "exhausted");
    }
    assert_eq!(won, 5);
    let coupon = app.get("/v1/coupons/FIRST5", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!((coupon["times_redeemed"].as_i64(), coupon["valid"].as_bool()), (Some(5), Some(false)));
    let applied = app.all_events().await.iter().filter(|e| e["event_type"] == "CouponApplied").count();
    assert_eq!(applied, 5, "the log holds exactly the winning redemptions");
}
