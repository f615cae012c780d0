//! Bad input always gets a clear 4xx in the contract's shape, and writes nothing.

use e2e::{spawn_app, TestApp, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn invalid_sign_ups_name_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let cases = [
        ("code", json!("AB")),
        ("code", json!("has space")),
        ("code", json!(42)),
        ("name", json!("   ")),
        ("billing_email", json!("not-an-email")),
        ("plan", json!("platinum")),
        ("billing_period", json!("weekly")),
        ("trial_days", json!(31)),
        ("trial_days", json!(-1)),
        ("tax_rate", json!("-5")),
        ("tax_rate", json!("101")),
        ("timezone", json!("Mars/Olympus")),
        ("currency", json!("XYZ")),
        ("locale", json!("english")),
        ("business_type", json!("Law Firm")),
    ];
    for (field, value) in cases {
        let mut body = TestApp::tenant_body("valid-code");
        body[field] = value.clone();
        let reply = app.create_tenant_raw(body).await;
        reply.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{field} = {value}: {}", reply.body);
    }
    let mut missing = TestApp::tenant_body("valid-code");
    missing.as_object_mut().unwrap().remove("plan");
    let reply = app.create_tenant_raw(missing).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(reply.body["error"]["details"]["field"], "plan");

    let mut unknown = TestApp::tenant_body("valid-code");
    unknown["colour"] = json!("red");
    let reply = app.create_tenant_raw(unknown).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(reply.body["error"]["details"]["field"], "colour");

    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Plan'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events, 0, "only the seeded catalog may be in the log");
}

#[tokio::test]
async fn broken_json_wrong_types_and_wrong_content_types_are_refused_clearly() {
    let app = spawn_app().await;
    let raw = |body: &'static str, content_type: &'static str| {
        app.request(Method::POST, "/v1/tenants", Some(ADMIN_TOKEN)).header("Content-Type", content_type).body(body)
    };
    app.send(raw("{\"code\": ", "application/json")).await.expect_error(400, "MALFORMED_JSON");
    app.send(raw("{} trailing", "application/json")).await.expect_error(400, "MALFORMED_JSON");
    app.send(raw("", "application/json")).await.expect_error(400, "MALFORMED_JSON");
    app.send(raw("[1, 2]", "application/json")).await.expect_error(400, "VALIDATION_FAILED");
    app.send(raw("\"a string\"", "application/json")).await.expect_error(400, "VALIDATION_FAILED");
    app.send(raw("{}", "text/plain")).await.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    app.send(app.request(Method::POST, "/v1/tenants", Some(ADMIN_TOKEN)).body("{}")).await.expect_error(415, "UNSUPPORTED_MEDIA_TYPE");
    app.send(raw("{\"code\": \"\u{0000}\"}", "application/json")).await.expect_error(400, "MALFORMED_JSON");
    let escaped_nul = app
        .send(raw(
            r#"{"code": "a\u0000b", "name": "x", "billing_email": "a@b.example", "plan": "starter"}"#,
            "application/json; charset=utf-8",
        ))
        .await;
    escaped_nul.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(escaped_nul.body["error"]["details"]["field"], "code");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app().await;
    let mut body = TestApp::tenant_body("big-body");
    body["name"] = json!("x".repeat(2 * 1024 * 1024));
    app.create_tenant_raw(body).await.expect_error(413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_contract_shape() {
    let app = spawn_app().await;
    app.get("/v1/nothing-here", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
    let reply = app.delete("/v1/tenants", ADMIN_TOKEN).await;
    reply.expect_error(405, "METHOD_NOT_ALLOWED");
    app.get("/v1/events?after=-1", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/events?limit=0", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/events?after=abc", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/tenants?status=sleeping", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/tenants?bogus=1", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.send(app.request(Method::GET, "/healthz", None)).await;
    assert_eq!(health.expect(200)["status"], "ok");
    let ready = app.send(app.request(Method::GET, "/readyz", None)).await;
    assert_eq!(ready.expect(200)["status"], "ready");
}

#[tokio::test]
async fn the_test_clock_is_absent_unless_enabled_and_only_moves_forward() {
    let app = spawn_app().await;
    app.put("/v1/admin/clock", ADMIN_TOKEN, json!({"now": "2030-01-01T00:00:00Z"})).await.expect_error(404, "NOT_FOUND");
    let clocked = e2e::spawn_app_with(|c| c.test_clock = true).await;
    clocked.put("/v1/admin/clock", ADMIN_TOKEN, json!({"now": "2030-01-01T00:00:00Z"})).await.expect(200);
    clocked.put("/v1/admin/clock", ADMIN_TOKEN, json!({"now": "2029-01-01T00:00:00Z"})).await.expect_error(409, "CLOCK_BACKWARDS");
    clocked.put("/v1/admin/clock", ADMIN_TOKEN, json!({"now": "yesterday"})).await.expect_error(400, "VALIDATION_FAILED");
    let tenant = clocked.create_tenant("time-traveller").await;
    let own = clocked.get("/v1/tenant", &tenant.key).await;
    assert_eq!(own.expect(200)["created_at"], "2030-01-01T00:00:00Z");
}

/// Refusals that teach: each names what was wrong and what would be right.
#[tokio::test]
async fn refusals_say_what_would_be_right() {
    let app = e2e::spawn_app_with(|c| c.max_body_bytes = 64 * 1024).await;
    let tenant = app.create_tenant("teaching-clinic").await;

    // A quantity with more than 6 decimal places: the rule, and the value sent, not serde's wording.
    let reply = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1.1234567, "idempotency_key": "frac"})).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(reply.body["error"]["details"]["field"], "quantity", "{}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("6 decimal places") && message.contains("1.1234567") && !message.contains("invalid type"), "{message}");
    let reply = app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": [1], "idempotency_key": "list"})).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("decimal string"), "{}", reply.body);

    // An unknown metric: every metric the tenant may record, each once.
    let reply = app.post("/v1/usage", &tenant.key, json!({"metric": "emails", "quantity": 1, "idempotency_key": "unknown"})).await;
    reply.expect_error(400, "VALIDATION_FAILED");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert_eq!(message.matches("\"api_calls\"").count(), 1, "{message}");

    // An unknown quota: the quotas there are.
    let reply = app.get("/v1/quota/foo", &tenant.key).await;
    reply.expect_error(404, "NOT_FOUND");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"foo\"") && message.contains("api_calls_per_month") && message.contains("users"), "{message}");

    // The test clock on a server without it: the setting that turns it on.
    let reply = app.put("/v1/admin/clock", ADMIN_TOKEN, json!({"now": "2030-01-01T00:00:00Z"})).await;
    reply.expect_error(404, "NOT_FOUND");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("SAAS_LEDGER_TEST_CLOCK=1"), "{}", reply.body);
    assert_eq!(reply.body["error"]["details"]["setting"], "SAAS_LEDGER_TEST_CLOCK", "{}", reply.body);

    // A body over the limit: the limit.
    let big = json!({"records": [{"metric": "api_calls", "quantity": 1, "idempotency_key": "x".repeat(70 * 1024)}]});
    let reply = app.post("/v1/usage/batch", &tenant.key, big).await;
    reply.expect_error(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(reply.body["error"]["details"]["limit_bytes"], 64 * 1024, "{}", reply.body);
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("65536 bytes"), "{}", reply.body);

    // An admin token that is not the current one (rotated): said so, not "unknown API key".
    let reply = app.get("/v1/tenants", &format!("sla_{}", "0".repeat(64))).await;
    reply.expect_error(401, "UNAUTHENTICATED");
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("admin-token rotate"), "{}", reply.body);
}
