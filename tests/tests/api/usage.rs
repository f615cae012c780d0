//! Usage metering: exactly-once facts under retry storms, batches, time series, quota.

use e2e::{spawn_app_with, ADMIN_TOKEN};
use futures::future::join_all;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_storm_counts_every_distinct_fact_once() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-03-10T12:00:00Z").await;
    // Professional: 300 requests at once fit its 500 per minute.
    let tenant = app.create_tenant_on("metered", "professional").await;
    // 100 distinct facts, each sent three times at once.
    let sends = (0..300).map(|i| {
        let n = i % 100;
        app.post(
            "/v1/usage",
            &tenant.key,
            json!({"metric": "api_calls", "quantity": n + 1, "idempotency_key": format!("req-{n}"), "occurred_at": "2027-03-10T12:00:00Z"}),
        )
    });
    let replies = join_all(sends).await;
    assert!(replies.iter().all(|r| r.status == 202), "{:?}", replies.iter().find(|r| r.status != 202).map(|r| &r.body));
    let duplicates = replies.iter().filter(|r| r.body["duplicate"] == true).count();
    assert_eq!(duplicates, 200);
    let expected: u64 = (1..=100).sum();
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
    let quota = quota.expect(200);
    assert_eq!(quota["used"].as_u64(), Some(expected));
    assert_eq!(quota["limit"].as_u64(), Some(50_000));
    assert_eq!(quota["period_start"], "2027-03-10T12:00:00Z", "the billing period, from sign-up");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Usage'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events, 100);
}

#[tokio::test]
async fn batches_accept_or_refuse_each_record_on_its_own() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-03-10T12:00:00Z").await;
    let tenant = app.create_tenant_on("batcher", "starter").await;
    let records = json!({"records": [
        {"metric": "sms", "quantity": 2, "idempotency_key": "b-1"},
        {"metric": "sms", "quantity": -5, "idempotency_key": "b-2"},
        {"metric": "sms", "quantity": 2, "idempotency_key": "b-1"},
        {"metric": "Bad Metric", "quantity": 1, "idempotency_key": "b-3"},
        {"metric": "sms", "quantity": 1, "idempotency_key": "b-4", "occurred_at": "2027-03-11T12:00:00Z"},
        {"metric": "sms", "quantity": 1e20, "idempotency_key": "b-5"},
        {"metric": "storage_bytes", "quantity": 2097152, "idempotency_key": "b-6"},
        {"metric": "sms", "quantity": 3, "idempotency_key": "b-1"}
    ]});
    let reply = app.post("/v1/usage/batch", &tenant.key, records.clone()).await;
    let body = reply.expect(202).clone();
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64(), body["refused"].as_u64()), (Some(3), Some(1), Some(5)));
    // The same batch again (a client's retry): every valid fact is now a duplicate, decided
    // again against its existing stream; the invalid ones are refused as before.
    let retried = app.post("/v1/usage/batch", &tenant.key, records).await.expect(202).clone();
    assert_eq!(
        (retried["accepted"].as_u64(), retried["duplicates"].as_u64(), retried["refused"].as_u64()),
        (Some(3), Some(3), Some(5)),
        "{retried}"
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[1]["error"]["details"]["field"], "quantity");
    assert_eq!(results[4]["error"]["details"]["field"], "occurred_at");
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[7]["error"]["code"], "IDEMPOTENCY_KEY_REUSED", "b-1 again with another quantity");
    assert_eq!(retried["results"][7]["error"]["code"], "IDEMPOTENCY_KEY_REUSED");

    let too_many: Vec<Value> = (0..1001).map(|i| json!({"metric": "sms", "quantity": 1, "idempotency_key": format!("x{i}")})).collect();
    app.post("/v1/usage/batch", &tenant.key, json!({"records": too_many})).await.expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage/batch", &tenant.key, json!({"records": []})).await.expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage", &tenant.key, json!({"metric": "sms", "quantity": "1.0000005", "idempotency_key": "frac"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage", &tenant.key, json!({"metric": "sms", "quantity": 1})).await.expect_error(400, "VALIDATION_FAILED");

    // The gauge counts its latest value; the batch's SMS sum is 2 (the duplicate counted once).
    let storage = app.get("/v1/quota/storage_mb", &tenant.key).await;
    assert_eq!(storage.expect(200)["used"], 2);
    let series = app.get("/v1/usage?metric=sms&from=2027-03-01T00:00:00Z&to=2027-04-01T00:00:00Z&granularity=month", &tenant.key).await;
    let buckets = series.expect(200)["buckets"].as_array().unwrap().clone();
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0]["start"], "2027-03-01T00:00:00Z");
    assert_eq!(buckets[0]["value"], json!("2"));
}

#[tokio::test]
async fn usage_series_bucket_by_hour_and_day_with_gauges_keeping_their_latest_value() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-03-12T00:00:00Z").await;
    let tenant = app.create_tenant_on("series", "starter").await;
    let facts = [
        ("api_calls", 5, "2027-03-10T09:10:00Z"),
        ("api_calls", 7, "2027-03-10T09:50:00Z"),
        ("api_calls", 1, "2027-03-10T10:05:00Z"),
        ("api_calls", 2, "2027-03-11T08:00:00Z"),
        ("storage_bytes", 100, "2027-03-10T09:00:00Z"),
        ("storage_bytes", 300, "2027-03-10T11:00:00Z"),
        ("storage_bytes", 200, "2027-03-10T10:00:00Z"),
    ];
    for (i, (metric, quantity, at)) in facts.iter().enumerate() {
        app.post(
            "/v1/usage",
            &tenant.key,
            json!({"metric": metric, "quantity": quantity, "idempotency_key": format!("f{i}"), "occurred_at": at}),
        )
        .await
        .expect(202);
    }
    let hourly =
        app.get("/v1/usage?metric=api_calls&from=2027-03-10T00:00:00Z&to=2027-03-11T00:00:00Z&granularity=hour", &tenant.key).await;
    let values: Vec<(String, String)> = hourly.expect(200)["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["start"].as_str().unwrap().to_owned(), b["value"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(values, [("2027-03-10T09:00:00Z".into(), "12".into()), ("2027-03-10T10:00:00Z".into(), "1".into())]);
    let daily = app.get("/v1/usage?from=2027-03-10T00:00:00Z&to=2027-03-12T00:00:00Z&granularity=day", &tenant.key).await;
    let daily = daily.expect(200)["buckets"].as_array().unwrap().clone();
    let pick = |metric: &str, day: &str| daily.iter().find(|b| b["metric"] == metric && b["start"] == day).map(|b| b["value"].clone());
    assert_eq!(pick("api_calls", "2027-03-10T00:00:00Z"), Some(json!("13")));
    assert_eq!(pick("api_calls", "2027-03-11T00:00:00Z"), Some(json!("2")));
    assert_eq!(pick("storage_bytes", "2027-03-10T00:00:00Z"), Some(json!("300")), "a gauge's day is its latest value");
    app.get("/v1/usage?granularity=week", &tenant.key).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/usage?from=2027-03-12T00:00:00Z&to=2027-03-10T00:00:00Z", &tenant.key).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/usage", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test]
async fn a_misspelt_metric_is_refused_not_stored_and_billed_as_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant_on("typo", "starter").await;
    let refused = app.post("/v1/usage", &tenant.key, json!({"metric": "emails", "quantity": 3, "idempotency_key": "t-1"})).await;
    refused.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(refused.body["error"]["details"]["field"], "metric");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("\"api_calls\""), "{}", refused.body);
    let batch = app
        .post(
            "/v1/usage/batch",
            &tenant.key,
            json!([{"metric": "emails", "quantity": 1, "idempotency_key": "t-2"}, {"metric": "sms", "quantity": 1, "idempotency_key": "t-3"}]),
        )
        .await
        .expect(202)
        .clone();
    assert_eq!((batch["accepted"].as_u64(), batch["refused"].as_u64()), (Some(1), Some(1)), "{batch}");
    assert_eq!(batch["results"][0]["error"]["details"]["field"], "metric");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Usage' AND payload->>'metric' = 'emails'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn metered_quota_counts_the_billing_period_the_invoice_bills() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-15T10:30:00Z").await;
    let tenant = app.create_tenant_on("anchored", "starter").await; // period Jan 15 10:30 – Feb 15 10:30
    app.set_clock("2027-02-02T00:00:00Z").await;
    // Before the period (the same hour as its start), in its first partial hour, inside, and
    // in February's calendar month.
    for (key, quantity, at) in [
        ("before", 50, "2027-01-15T10:20:00Z"),
        ("first-hour", 200, "2027-01-15T10:45:00Z"),
        ("inside", 300, "2027-01-31T12:00:00Z"),
        ("february", 400, "2027-02-01T08:00:00Z"),
    ] {
        app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": key, "occurred_at": at}))
            .await
            .expect(202);
    }
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await.expect(200).clone();
    assert_eq!(quota["used"], 900, "{quota}");
    assert_eq!(
        (quota["period_start"].as_str(), quota["period_end"].as_str()),
        (Some("2027-01-15T10:30:00Z"), Some("2027-02-15T10:30:00Z"))
    );
    assert_eq!((quota["limit"].as_u64(), quota["remaining"].as_u64()), (Some(10_000), Some(9_100)));

    // A yearly subscription's allowance is the year's.
    let mut yearly = e2e::TestApp::tenant_body("anchored-yearly");
    yearly["billing_period"] = json!("yearly");
    yearly["trial_days"] = json!(0);
    let yearly = app.create_tenant_from(yearly).await;
    let quota = app.get("/v1/quota/api_calls", &yearly.key).await.expect(200).clone();
    assert_eq!((quota["limit"].as_u64(), quota["period_end"].as_str()), (Some(120_000), Some("2028-02-02T00:00:00Z")));
}

/// A quota answer is kept per tenant and served again only while the tenant has no new event
/// and the month is the same: a new fact shows at once, and so does a new month's booking count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_quota_answer_is_served_only_for_the_same_last_event_and_month() {
    let app = e2e::spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2031-03-31T23:00:00Z").await;
    let tenant = app.create_tenant_on("quota-kept", "professional").await;
    let room = app.create_resource(&tenant.key, "room", 1).await;
    app.book(&tenant.key, &room, "2031-04-02T09:00:00Z", "2031-04-02T10:00:00Z", 1).await.expect(201);
    for _ in 0..3 {
        assert_eq!(app.get("/v1/quota/bookings_per_month", &tenant.key).await.expect(200)["used"], 1);
    }
    let before = app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].as_u64().unwrap();
    let recorded = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 5, "idempotency_key": "kept-1"})).await;
    recorded.expect(202);
    let after = app.get("/v1/quota/api_calls", &tenant.key).await;
    assert_eq!(after.expect(200)["used"].as_u64().unwrap(), before + 5);
    assert_eq!(
        after.headers.get("ledger-position").map(|v| v.to_str().unwrap().to_owned()),
        recorded.headers.get("ledger-position").map(|v| v.to_str().unwrap().to_owned()),
        "a kept answer names the position it reflects"
    );
    assert_eq!(app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].as_u64().unwrap(), before + 5, "kept");
    app.set_clock("2031-04-01T00:30:00Z").await;
    assert_eq!(app.get("/v1/quota/bookings_per_month", &tenant.key).await.expect(200)["used"], 0, "a new month counts afresh");
}

/// A usage fact's key sent again with the same fact is a duplicate; with another metric,
/// quantity or stated `occurred_at`, it is 409 `IDEMPOTENCY_KEY_REUSED` naming what was
/// recorded, and nothing more is counted.
#[tokio::test]
async fn a_key_resent_with_another_fact_is_a_conflict_not_a_duplicate() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant("resending-clinic").await;
    // Within the tenant's first period, which began at its sign-up.
    let now = chrono::Utc::now();
    let occurred = (now + chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let later = (now + chrono::Duration::seconds(2)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let fact = serde_json::json!({"metric": "api_calls", "quantity": 5, "idempotency_key": "req-1", "occurred_at": occurred});
    let first = app.post("/v1/usage", &tenant.key, fact.clone()).await;
    assert_eq!(first.expect(202)["duplicate"], false);
    let again = app.post("/v1/usage", &tenant.key, fact.clone()).await;
    assert_eq!(again.expect(202)["duplicate"], true, "the same fact again");
    for (field, value) in
        [("quantity", serde_json::json!(7)), ("metric", serde_json::json!("sms")), ("occurred_at", serde_json::json!(later))]
    {
        let mut other = fact.clone();
        other[field] = value;
        let reply = app.post("/v1/usage", &tenant.key, other).await;
        reply.expect_error(409, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(reply.body["error"]["details"]["recorded"]["quantity"], 5, "{field}: {}", reply.body);
    }
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
    assert_eq!(quota.expect(200)["used"], 5, "counted once: {}", quota.body);
}

/// The same rule whichever way a key came in: a key a batch recorded, sent again on its own or
/// in another batch with another fact, is a conflict; with the same fact, a duplicate. Within
/// one batch too. Nothing of a refused record is counted.
#[tokio::test]
async fn a_key_a_batch_recorded_resent_with_another_fact_is_a_conflict_every_way() {
    let app = spawn_app_with(|_| {}).await;
    let tenant = app.create_tenant("batching-clinic").await;
    let occurred = (chrono::Utc::now() + chrono::Duration::seconds(1)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let fact = |key: &str, quantity: i64| serde_json::json!({"metric": "api_calls", "quantity": quantity, "idempotency_key": key, "occurred_at": occurred});
    let batch = |records: Vec<serde_json::Value>| serde_json::json!({ "records": records });
    let outcome = |body: &serde_json::Value, index: usize| {
        let result = &body["results"][index];
        match result["error"]["code"].as_str() {
            Some(code) => code.to_owned(),
            None => format!("duplicate={}", result["duplicate"]),
        }
    };

    // A first batch: b-1 and b-2 recorded; b-1 again in it with another quantity is refused,
    // b-2 again with the same fact is a duplicate.
    let first = app.post("/v1/usage/batch", &tenant.key, batch(vec![fact("b-1", 5), fact("b-2", 3), fact("b-1", 6), fact("b-2", 3)])).await;
    let body = first.expect(202).clone();
    let outcomes: Vec<String> = (0..4).map(|i| outcome(&body, i)).collect();
    assert_eq!(outcomes, ["duplicate=false", "duplicate=false", "IDEMPOTENCY_KEY_REUSED", "duplicate=true"], "{body}");
    assert_eq!(body["results"][2]["error"]["details"]["recorded"]["quantity"], 5, "{body}");

    // On its own: the batch's fact again is a duplicate, another fact a conflict naming it.
    let again = app.post("/v1/usage", &tenant.key, fact("b-1", 5)).await;
    assert_eq!(again.expect(202)["duplicate"], true, "{}", again.body);
    let other = app.post("/v1/usage", &tenant.key, fact("b-2", 4)).await;
    other.expect_error(409, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(other.body["error"]["details"]["recorded"]["quantity"], 3, "{}", other.body);
    // Without `occurred_at`, a resend cannot repeat the instant: the metric and quantity decide.
    let unstated =
        app.post("/v1/usage", &tenant.key, serde_json::json!({"metric": "api_calls", "quantity": 5, "idempotency_key": "b-1"})).await;
    assert_eq!(unstated.expect(202)["duplicate"], true, "{}", unstated.body);

    // A fact recorded on its own, then batches resending it and b-1/b-2 with and without changes.
    app.post("/v1/usage", &tenant.key, fact("s-1", 10)).await.expect(202);
    let second = app
        .post(
            "/v1/usage/batch",
            &tenant.key,
            batch(vec![fact("b-1", 5), fact("b-2", 30), fact("s-1", 10), fact("s-1", 11), fact("n-1", 1)]),
        )
        .await;
    let body = second.expect(202).clone();
    let outcomes: Vec<String> = (0..5).map(|i| outcome(&body, i)).collect();
    assert_eq!(
        outcomes,
        ["duplicate=true", "IDEMPOTENCY_KEY_REUSED", "duplicate=true", "IDEMPOTENCY_KEY_REUSED", "duplicate=false"],
        "{body}"
    );
    assert_eq!(body["results"][3]["error"]["details"]["recorded"]["quantity"], 10, "{body}");

    let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
    assert_eq!(quota.expect(200)["used"], 5 + 3 + 10 + 1, "each key counted once, with its first fact: {}", quota.body);
}
