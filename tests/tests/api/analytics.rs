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
                                                     // On trial until Jan 24, then paying (recorded when the clock moves on, counted from Jan 24).
    let trialing = app.create_tenant("rev-trial").await;
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
    assert_eq!(pick(&months[0], "mrr"), "223.83");
    assert_eq!(pick(&months[0], "arr"), "2685.96");
    assert_eq!(pick(&months[0], "active_tenants"), 3);
    assert_eq!(pick(&months[0], "new_tenants"), 3);
    assert_eq!(pick(&months[0], "by_plan"), json!({"starter": "58.00", "business": "165.83"}));
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

/// The definition the rollups must agree with, read straight from the spans of paying
/// subscriptions (`rm.subscription_spans`) and the subscriptions: per month, what paid at its
/// end, who signed up and who left in it, and who paid at its start.
const REVENUE_FROM_SPANS: &str = "
    WITH months AS (
        SELECT m AT TIME ZONE 'UTC' AS month, (m + interval '1 month') AT TIME ZONE 'UTC' AS month_end
        FROM generate_series(timestamp '2027-01-01', timestamp '2027-04-01', interval '1 month') m
    ),
    at_end AS (
        SELECT months.month, s.tenant_id, s.plan, s.monthly_value
        FROM months JOIN rm.subscription_spans s ON s.from_at < months.month_end AND (s.to_at IS NULL OR s.to_at >= months.month_end)
    )
    SELECT months.month,
           coalesce((SELECT sum(monthly_value) FROM at_end WHERE at_end.month = months.month), 0) AS mrr,
           (SELECT count(DISTINCT tenant_id) FROM at_end WHERE at_end.month = months.month) AS active_tenants,
           (SELECT count(*) FROM rm.subscriptions WHERE started_at >= months.month AND started_at < months.month_end) AS new_tenants,
           (SELECT count(*) FROM rm.subscriptions WHERE cancelled_at >= months.month AND cancelled_at < months.month_end) AS churned_tenants,
           (SELECT count(DISTINCT tenant_id) FROM rm.subscription_spans s
             WHERE s.from_at < months.month AND (s.to_at IS NULL OR s.to_at >= months.month)) AS active_at_start,
           coalesce((SELECT jsonb_object_agg(plan, mrr::text) FROM (SELECT plan, sum(monthly_value) AS mrr FROM at_end
                      WHERE at_end.month = months.month GROUP BY plan) p), '{}'::jsonb) AS by_plan
    FROM months ORDER BY months.month";

type RevenueRow = (chrono::DateTime<chrono::Utc>, rust_decimal::Decimal, i64, i64, i64, i64, Value);

#[tokio::test]
async fn revenue_rollups_agree_with_the_paying_spans_month_by_month() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-10T00:00:00Z").await;
    let a = app.create_tenant_on("roll-a", "starter").await; // 29.00
    let mut yearly = TestApp::tenant_body("roll-b");
    yearly["plan"] = json!("business");
    yearly["billing_period"] = json!("yearly");
    yearly["trial_days"] = json!(0);
    app.create_tenant_raw(yearly).await.expect(201); // 165.83 a month
    app.create_tenant("roll-c").await; // a 14-day trial, then starter from Jan 24
    let d = app.create_tenant_on("roll-d", "professional").await; // 79.00
    app.set_clock("2027-02-05T00:00:00Z").await;
    app.post("/v1/subscription/change-plan", &a.key, json!({"plan": "professional"})).await.expect(200);
    app.post("/v1/subscription/cancel", &a.key, json!({"at_period_end": true})).await.expect(200); // ends Feb 10
                                                                                                   // Cancelled on the very instant February ends: it paid at February's end, not at March's.
    app.set_clock("2027-03-01T00:00:00Z").await;
    app.post("/v1/subscription/cancel", &d.key, json!({"at_period_end": false})).await.expect(200);
    app.set_clock("2027-04-15T00:00:00Z").await;
    app.create_tenant_on("roll-e", "starter").await;
    app.set_clock("2027-05-02T00:00:00Z").await;

    let served =
        app.get("/v1/admin/analytics/revenue?from=2027-01-01T00:00:00Z&to=2027-06-01T00:00:00Z", ADMIN_TOKEN).await.expect(200).clone();
    let served = served.as_array().unwrap();
    let brief: Vec<(String, String, i64, i64, i64, f64)> = served
        .iter()
        .map(|m| {
            (
                m["month"].as_str().unwrap().to_owned(),
                m["mrr"].as_str().unwrap().to_owned(),
                m["active_tenants"].as_i64().unwrap(),
                m["new_tenants"].as_i64().unwrap(),
                m["churned_tenants"].as_i64().unwrap(),
                m["churn_rate"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        brief,
        [
            // a 29, b 165.83, c 29 from Jan 24 (its trial's end, recorded on Feb 5), d 79
            ("2027-01".to_owned(), "302.83".to_owned(), 4, 4, 0, 0.0),
            // a upgraded, then left on Feb 10 (recorded on Mar 1): b, c, d
            ("2027-02".into(), "273.83".into(), 3, 0, 1, 0.25),
            // d left on the instant March began: it paid at February's end, not at March's
            ("2027-03".into(), "194.83".into(), 2, 0, 1, 0.3333),
            ("2027-04".into(), "223.83".into(), 3, 1, 0, 0.0),
        ],
        "{served:?}"
    );
    assert_eq!(served[1]["by_plan"], json!({"starter": "29.00", "professional": "79.00", "business": "165.83"}));

    // Month by month, the rollups say what the spans say.
    let oracle: Vec<RevenueRow> = sqlx::query_as(REVENUE_FROM_SPANS).fetch_all(&app.pool).await.unwrap();
    let rollups: Vec<RevenueRow> = sqlx::query_as(
        "SELECT month, mrr, active_tenants, new_tenants, churned_tenants, active_at_start, by_plan FROM analytics.revenue_monthly
         WHERE month >= '2027-01-01' AND month <= '2027-04-01' ORDER BY month",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rollups, oracle);

    // And so does a rebuild.
    app.post("/v1/admin/projections/billing/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).as_array().unwrap().clone();
        if runs.iter().any(|r| r["name"] == "billing" && r["generation"] == 2 && r["status"] == "live") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish: {runs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again =
        app.get("/v1/admin/analytics/revenue?from=2027-01-01T00:00:00Z&to=2027-06-01T00:00:00Z", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(&again, &Value::Array(served.clone()));
}
