//! Analytics read models: usage buckets and platform revenue per month, also as SQL views.

use e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

#[tokio::test]
async fn revenue_per_month_tracks_mrr_new_and_churned_tenants_by_plan() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-10T00:00:00Z").await;
    let a = app.create_tenant_on("rev-a", "starter").await; // 29.00 monthly
    let mut yearly = TestApp::tenant_body("rev-b");
    yearly["plan"] = json!("business");
    yearly["billing_period"] = json!("yearly");
    yearly["trial_days"] = json!(0);
    app.create_tenant_raw(yearly).await.expect(201); // 1990.00 yearly = 165.83 a month
    let trialing = app.create_tenant("rev-trial").await; // on trial: not revenue yet
    app.set_clock("2027-02-05T00:00:00Z").await;
    app.post("/v1/subscription/change-plan", &a.key, json!({"plan": "professional"})).await.expect(200);
    app.post("/v1/subscription/cancel", &trialing.key, json!({"at_period_end": false})).await.expect(200);
    app.set_clock("2027-03-02T00:00:00Z").await;

    let months =
        app.get("/v1/admin/analytics/revenue?from=2027-01-01T00:00:00Z&to=2027-03-01T00:00:00Z", ADMIN_TOKEN).await.expect(200).clone();
    let months = months.as_array().unwrap();
    let pick = |m: &Value, k: &str| m[k].clone();
    assert_eq!(months.len(), 2, "{months:?}");
    assert_eq!(pick(&months[0], "month"), "2027-01");
    assert_eq!(pick(&months[0], "mrr"), "194.83");
    assert_eq!(pick(&months[0], "arr"), "2337.96");
    assert_eq!(pick(&months[0], "active_tenants"), 2);
    assert_eq!(pick(&months[0], "new_tenants"), 3);
    assert_eq!(pick(&months[0], "by_plan"), json!({"starter": "29.00", "business": "165.83"}));
    assert_eq!(pick(&months[1], "month"), "2027-02");
    assert_eq!(pick(&months[1], "mrr"), "244.83");
    assert_eq!(pick(&months[1], "churned_tenants"), 1);
    assert_eq!(pick(&months[1], "by_plan"), json!({"professional": "79.00", "business": "165.83"}));
    app.get("/v1/admin/analytics/revenue", &a.key).await.expect_error(403, "FORBIDDEN");

    // The same model is a view BI tools can read.
    let from_sql: i64 =
        sqlx::query_scalar("SELECT count(*) FROM analytics.revenue_monthly WHERE month < '2027-03-01'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(from_sql, 2);
    let bookings: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.bookings_daily").fetch_one(&app.pool).await.unwrap();
    assert_eq!(bookings, 0);
}

#[tokio::test]
async fn usage_analytics_buckets_by_granularity() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-04-03T00:00:00Z").await;
    let tenant = app.create_tenant_on("usage-bi", "starter").await;
    for (i, at) in ["2027-04-01T10:00:00Z", "2027-04-01T10:30:00Z", "2027-04-02T09:00:00Z"].iter().enumerate() {
        app.post(
            "/v1/usage",
            &tenant.key,
            json!({"metric": "api_calls", "quantity": 10, "idempotency_key": format!("bi-{i}"), "occurred_at": at}),
        )
        .await
        .expect(202);
    }
    let daily = app
        .get("/v1/analytics/usage?from=2027-04-01T00:00:00Z&to=2027-04-03T00:00:00Z&granularity=day", &tenant.key)
        .await
        .expect(200)
        .clone();
    let values: Vec<(String, String)> = daily["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["start"].as_str().unwrap().to_owned(), b["value"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(values, [("2027-04-01T00:00:00Z".into(), "20".into()), ("2027-04-02T00:00:00Z".into(), "10".into())]);
    let monthly = app
        .get("/v1/analytics/usage?from=2027-04-01T00:00:00Z&to=2027-05-01T00:00:00Z&granularity=month", &tenant.key)
        .await
        .expect(200)
        .clone();
    assert_eq!(monthly["buckets"][0]["value"], "30");
    app.get("/v1/analytics/usage?granularity=year", &tenant.key).await.expect_error(400, "VALIDATION_FAILED");
    let sql: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.usage_hourly WHERE tenant_id = $1")
        .bind(tenant.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sql, 2);
}
