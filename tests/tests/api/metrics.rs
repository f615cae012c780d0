//! Billable metrics through HTTP with the test clock: the catalog (built-ins first, a code
//! defined once), decimal facts (numbers and decimal strings, at most 6 places) rounded once
//! after aggregation by the metric's precision and rule and then priced by per-unit and
//! graduated charges, `max`, `last` and an exact `unique_count` over duplicate values, quotas for
//! every metric the plan prices, corrections of decimal and unique facts billed as the
//! difference, and rebuilds and the simulation giving the same figures.

use std::collections::BTreeMap;

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

async fn define(app: &TestApp, body: Value) -> Value {
    app.post("/v1/metrics", ADMIN_TOKEN, body).await.expect(201).clone()
}

/// A read without any token (the catalog is public, like plans).
async fn public(app: &TestApp, path: &str) -> e2e::Reply {
    app.send(app.request(reqwest::Method::GET, path, None)).await
}

async fn record(app: &TestApp, tenant: &TestTenant, body: Value) {
    app.post("/v1/usage", &tenant.key, body).await.expect(202);
}

/// The invoice's usage lines by metric (the description starts with the metric's code).
fn usage_lines(invoice: &Value) -> BTreeMap<String, Vec<String>> {
    let mut by_metric: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in invoice["lines"].as_array().unwrap() {
        if line["kind"] != "usage" {
            continue;
        }
        let description = line["description"].as_str().unwrap();
        let metric = description.split([':', ',']).next().unwrap().to_owned();
        by_metric.entry(metric).or_default().push(line["amount"].as_str().unwrap().to_owned());
    }
    by_metric
}

fn expected(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().map(|(m, a)| ((*m).to_owned(), a.iter().map(|s| (*s).to_owned()).collect())).collect()
}

#[tokio::test]
async fn the_metric_catalog_lists_the_built_ins_and_takes_each_code_once() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    let listed = public(&app, "/v1/metrics").await.expect(200).clone();
    let built_ins: Vec<(String, String, i64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["code"].as_str().unwrap().to_owned(), m["aggregation"].as_str().unwrap().to_owned(), m["precision"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        built_ins,
        [
            ("api_calls".into(), "sum".into(), 0),
            ("sms".into(), "sum".into(), 0),
            ("storage_bytes".into(), "last".into(), 0),
            ("tickets".into(), "sum".into(), 0)
        ],
        "{listed}"
    );
    let made = define(
        &app,
        json!({"code": "gb_hours", "name": "Storage", "aggregation": "sum", "unit": "GB-h", "precision": 2, "rounding": "up"}),
    )
    .await;
    assert_eq!((made["code"].as_str(), made["precision"].as_i64(), made["rounding"].as_str()), (Some("gb_hours"), Some(2), Some("up")));
    assert_eq!(made["built_in"], false);
    let read = public(&app, "/v1/metrics/gb_hours").await.expect(200).clone();
    assert_eq!(read["unit"], "GB-h");
    assert_eq!(public(&app, "/v1/metrics").await.expect(200).as_array().unwrap().len(), 5);
    let defaults = define(&app, json!({"code": "mau", "name": "Monthly active users", "aggregation": "unique_count"})).await;
    assert_eq!((defaults["precision"].as_i64(), defaults["rounding"].as_str()), (Some(0), Some("half_up")));

    // Taken codes, bad figures, callers who may not.
    for (body, status, code, field) in [
        (json!({"code": "gb_hours", "name": "Again", "aggregation": "max"}), 409, "CONFLICT", "code"),
        (json!({"code": "api_calls", "name": "Mine", "aggregation": "sum"}), 409, "CONFLICT", "code"),
        (json!({"code": "x", "name": "X", "aggregation": "sum", "precision": 7}), 400, "VALIDATION_FAILED", "precision"),
        (json!({"code": "x", "name": "X", "aggregation": "sum", "precision": 1.5}), 400, "VALIDATION_FAILED", "precision"),
        (json!({"code": "x", "name": "X", "aggregation": "avg"}), 400, "VALIDATION_FAILED", "aggregation"),
        (json!({"code": "x", "name": "X", "aggregation": "sum", "rounding": "even"}), 400, "VALIDATION_FAILED", "rounding"),
        (json!({"code": "Bad-Code", "name": "X", "aggregation": "sum"}), 400, "VALIDATION_FAILED", "code"),
        (json!({"code": "x", "name": "", "aggregation": "sum"}), 400, "VALIDATION_FAILED", "name"),
    ] {
        let refused = app.post("/v1/metrics", ADMIN_TOKEN, body.clone()).await;
        refused.expect_error(status, code);
        assert_eq!(refused.body["error"]["details"]["field"], field, "{body}: {}", refused.body);
    }
    let tenant = app.create_tenant_on("catalog-reader", "starter").await;
    app.post("/v1/metrics", &tenant.key, json!({"code": "y", "name": "Y", "aggregation": "sum"})).await.expect_error(403, "FORBIDDEN");
    public(&app, "/v1/metrics/no_such_metric").await.expect_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn decimal_facts_are_rounded_once_after_aggregation_then_priced_and_unique_counts_are_exact() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    define(&app, json!({"code": "gb_hours", "name": "Storage", "aggregation": "sum", "precision": 0, "rounding": "up"})).await;
    define(&app, json!({"code": "compute_hours", "name": "Compute", "aggregation": "sum", "precision": 2})).await;
    define(&app, json!({"code": "peak_seats", "name": "Peak seats", "aggregation": "max"})).await;
    define(&app, json!({"code": "active_users", "name": "Active users", "aggregation": "unique_count"})).await;
    define(&app, json!({"code": "disk_gb", "name": "Disk", "aggregation": "last", "precision": 1, "rounding": "down"})).await;
    let plan = json!({"code": "metered-plus", "name": "Metered Plus", "monthly_price": "10.00", "limits": {}, "rate_limit_per_minute": 500,
    "charges": [
        {"metric": "gb_hours", "model": "per_unit", "unit_price": "1.00"},
        {"metric": "compute_hours", "model": "graduated", "tiers": [{"up_to": 10, "unit_price": "1.00"}, {"up_to": null, "unit_price": "0.50"}]},
        {"metric": "peak_seats", "model": "per_unit", "unit_price": "2.00"},
        {"metric": "active_users", "model": "per_unit", "unit_price": "0.25"},
        {"metric": "disk_gb", "model": "per_unit", "unit_price": "0.10"}
    ]});
    app.post("/v1/plans", ADMIN_TOKEN, plan).await.expect(201);
    let tenant = app.create_tenant_on("decimal-meter", "metered-plus").await;

    app.set_clock("2027-01-20T00:00:00Z").await;
    let at = "2027-01-10T00:00:00Z";
    // 5.1 + 5.1 on a precision-0 metric rounding up: 11, not 6 + 6.
    record(&app, &tenant, json!({"metric": "gb_hours", "quantity": 5.1, "idempotency_key": "gb-1", "occurred_at": at})).await;
    record(&app, &tenant, json!({"metric": "gb_hours", "quantity": "5.1", "idempotency_key": "gb-2", "occurred_at": at})).await;
    // 12.625 kept to 2 places, half up: 12.63 → 10 × 1.00 and 2.63 × 0.50 = 1.315 → 1.32.
    record(&app, &tenant, json!({"metric": "compute_hours", "quantity": "7.125", "idempotency_key": "ch-1", "occurred_at": at})).await;
    record(&app, &tenant, json!({"metric": "compute_hours", "quantity": 5.5, "idempotency_key": "ch-2", "occurred_at": at})).await;
    // The largest of 3, 7 and 5; the latest (by occurred_at) of three readings, 4.77 → 4.7 (down).
    let batch = app
        .post(
            "/v1/usage/batch",
            &tenant.key,
            json!({"records": [
                {"metric": "peak_seats", "quantity": 3, "idempotency_key": "ps-1", "occurred_at": "2027-01-05T00:00:00Z"},
                {"metric": "peak_seats", "quantity": 7, "idempotency_key": "ps-2", "occurred_at": "2027-01-06T00:00:00Z"},
                {"metric": "peak_seats", "quantity": 5, "idempotency_key": "ps-3", "occurred_at": "2027-01-07T00:00:00Z"},
                {"metric": "disk_gb", "quantity": "2.38", "idempotency_key": "dg-1", "occurred_at": "2027-01-05T00:00:00Z"},
                {"metric": "disk_gb", "quantity": "4.77", "idempotency_key": "dg-2", "occurred_at": "2027-01-15T00:00:00Z"},
                {"metric": "active_users", "value": "u1", "idempotency_key": "au-1", "occurred_at": "2027-01-02T00:00:00Z"},
                {"metric": "active_users", "value": "u2", "idempotency_key": "au-2", "occurred_at": "2027-01-03T00:00:00Z"},
                {"metric": "gb_hours", "quantity": "0.0000001", "idempotency_key": "gb-bad", "occurred_at": at}
            ]}),
        )
        .await
        .expect(202)
        .clone();
    assert_eq!((batch["accepted"].as_i64(), batch["refused"].as_i64()), (Some(7), Some(1)), "{batch}");
    assert_eq!(batch["results"][7]["error"]["details"]["field"], "quantity", "{batch}");
    record(&app, &tenant, json!({"metric": "disk_gb", "quantity": 9.99, "idempotency_key": "dg-3", "occurred_at": "2027-01-12T00:00:00Z"}))
        .await;
    // u1 again under another key: one distinct user, whatever the facts.
    record(&app, &tenant, json!({"metric": "active_users", "value": "u1", "idempotency_key": "au-3", "occurred_at": at})).await;
    record(&app, &tenant, json!({"metric": "active_users", "value": "u3", "idempotency_key": "au-4", "occurred_at": at})).await;
    // A resend is a duplicate; another value under the key is another fact.
    let resent = app
        .post("/v1/usage", &tenant.key, json!({"metric": "active_users", "value": "u3", "idempotency_key": "au-4", "occurred_at": at}))
        .await;
    assert_eq!(resent.expect(202)["duplicate"], true);
    app.post("/v1/usage", &tenant.key, json!({"metric": "active_users", "value": "u9", "idempotency_key": "au-4", "occurred_at": at}))
        .await
        .expect_error(409, "IDEMPOTENCY_KEY_REUSED");

    // Bad input: a clear 400 naming the field.
    for (body, field) in [
        (json!({"metric": "gb_hours", "quantity": "1.1234567", "idempotency_key": "b1"}), "quantity"),
        (json!({"metric": "gb_hours", "quantity": "lots", "idempotency_key": "b2"}), "quantity"),
        (json!({"metric": "gb_hours", "quantity": -0.5, "idempotency_key": "b3"}), "quantity"),
        (json!({"metric": "gb_hours", "idempotency_key": "b4"}), "quantity"),
        (json!({"metric": "gb_hours", "quantity": 1, "value": "u1", "idempotency_key": "b5"}), "value"),
        (json!({"metric": "active_users", "idempotency_key": "b6"}), "value"),
        (json!({"metric": "active_users", "quantity": 1, "value": "u1", "idempotency_key": "b7"}), "quantity"),
        (json!({"metric": "active_users", "value": "", "idempotency_key": "b8"}), "value"),
    ] {
        let refused = app.post("/v1/usage", &tenant.key, body.clone()).await;
        refused.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(refused.body["error"]["details"]["field"], field, "{body}: {}", refused.body);
    }

    // Quotas answer for every metric the plan prices: the period's aggregate, no limit.
    let quota = |metric: &'static str| {
        let app = &app;
        let tenant = &tenant;
        async move { app.get(&format!("/v1/quota/{metric}"), &tenant.key).await.expect(200).clone() }
    };
    let gb = quota("gb_hours").await;
    assert_eq!((gb["used"].clone(), gb["limit"].clone(), gb["remaining"].clone()), (json!(11), Value::Null, Value::Null), "{gb}");
    assert_eq!(gb["period_start"], "2027-01-01T00:00:00Z");
    assert_eq!(quota("compute_hours").await["used"], json!(12.63));
    assert_eq!(quota("peak_seats").await["used"], json!(7));
    assert_eq!(quota("active_users").await["used"], json!(3));
    assert_eq!(quota("disk_gb").await["used"], json!(4.7));
    let all = app.get("/v1/quota", &tenant.key).await.expect(200).clone();
    assert!(all.as_array().unwrap().iter().any(|l| l["metric"] == "active_users"), "{all}");
    app.get("/v1/quota/imports", &tenant.key).await.expect_error(404, "NOT_FOUND");
    let series =
        app.get("/v1/usage?metric=active_users&granularity=month&from=2027-01-01T00:00:00Z&to=2027-02-01T00:00:00Z", &tenant.key).await;
    let series = series.expect(200).clone();
    assert_eq!((series["buckets"][0]["value"].as_str(), series["buckets"][0]["facts"].as_i64()), (Some("3"), Some(4)), "{series}");
    let seats =
        app.get("/v1/usage?metric=peak_seats&granularity=month&from=2027-01-01T00:00:00Z&to=2027-02-01T00:00:00Z", &tenant.key).await;
    assert_eq!(seats.expect(200)["buckets"][0]["value"], "7");

    // February's invoice bills January: each figure rounded once, then priced.
    app.set_clock("2027-02-01T00:00:00Z").await;
    let february = app.invoices(&tenant.key).await[1].clone();
    assert_eq!(
        usage_lines(&february),
        expected(&[
            ("gb_hours", &["11.00"]),
            ("compute_hours", &["10.00", "1.32"]),
            ("peak_seats", &["14.00"]),
            ("active_users", &["0.75"]),
            ("disk_gb", &["0.47"])
        ]),
        "{february}"
    );
    let gb_line =
        february["lines"].as_array().unwrap().iter().find(|l| l["description"].as_str().unwrap().starts_with("gb_hours")).unwrap();
    assert_eq!(gb_line["quantity"], "11", "{gb_line}");

    // Corrections of January: a decimal fact voided (5.1 → 6 GB-hours: −5.00), the repeated
    // user amended to a new one (4 distinct: +0.25); a unique fact is amended by value only.
    app.set_clock("2027-02-05T00:00:00Z").await;
    app.post("/v1/usage/gb-2/void", &tenant.key, json!({"reason": "Metered twice"})).await.expect(200);
    let amended =
        app.post("/v1/usage/au-3/amend", &tenant.key, json!({"value": "u4", "reason": "Wrong user id"})).await.expect(200).clone();
    assert_eq!((amended["value"].as_str(), amended["corrections"][0]["previous_value"].as_str()), (Some("u4"), Some("u1")), "{amended}");
    app.post("/v1/usage/au-4/amend", &tenant.key, json!({"quantity": 2, "reason": "x"})).await.expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/usage/ch-1/amend", &tenant.key, json!({"value": "x", "reason": "x"})).await.expect_error(400, "VALIDATION_FAILED");
    let compute =
        app.post("/v1/usage/ch-1/amend", &tenant.key, json!({"quantity": "7.135", "reason": "Re-metered"})).await.expect(200).clone();
    assert_eq!(compute["quantity"], "7.135");
    app.set_clock("2027-03-01T00:00:00Z").await;
    let march = app.invoices(&tenant.key).await[2].clone();
    // compute_hours 12.635 → 12.64: tier 2 holds 2.64 × 0.50 = 1.32, as before: no line.
    assert_eq!(usage_lines(&march), expected(&[("gb_hours", &["-5.00"]), ("active_users", &["0.25"])]), "{march}");

    // Rebuilt read models give the same figures; the simulation re-runs billing to 0.00.
    let before = app.get("/v1/quota", &tenant.key).await.expect(200).clone();
    crate::corrections::rebuild(&app, "usage").await;
    assert_eq!(app.get("/v1/quota", &tenant.key).await.expect(200).clone(), before);
    crate::corrections::simulation_differs_nowhere(&app, "2027-01-01T00:00:00Z", "2027-04-01T00:00:00Z").await;
}
