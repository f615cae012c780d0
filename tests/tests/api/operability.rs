//! Idempotency keys, per-plan rate limits and `/metrics`, through the real server.

use e2e::{spawn_app, ADMIN_TOKEN};
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

async fn event_count(app: &e2e::TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn a_retried_post_with_the_same_key_answers_the_first_response_and_appends_nothing() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("idem-clinic").await;
    let room = app.create_resource(&tenant.key, "room", 1).await;
    let body = json!({"resource_id": room, "starts_at": "2031-03-01T09:00:00Z", "ends_at": "2031-03-01T10:00:00Z",
                      "customer": {"name": "Ada", "email": "ada@example.com"}});
    let post =
        |key: &str, body: &Value| app.request(Method::POST, "/v1/bookings", Some(&tenant.key)).header("Idempotency-Key", key).json(body);

    let first = app.send(post("book-1", &body)).await;
    let first_body = first.expect(201).clone();
    assert!(first.headers.get("idempotent-replayed").is_none());
    let events = event_count(&app).await;

    // The retry gets the same answer (not a 409 overlap from a second attempt) and nothing is appended.
    let retry = app.send(post("book-1", &body)).await;
    assert_eq!(retry.expect(201), &first_body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(event_count(&app).await, events);

    // The same key with another body is refused, whatever the body says.
    let mut other = body.clone();
    other["starts_at"] = json!("2031-03-02T09:00:00Z");
    other["ends_at"] = json!("2031-03-02T10:00:00Z");
    app.send(post("book-1", &other)).await.expect_error(409, "IDEMPOTENCY_KEY_REUSED");
    // ... and on another route.
    let reused = app.send(app.request(Method::POST, "/v1/usage", Some(&tenant.key)).header("Idempotency-Key", "book-1").json(&body)).await;
    reused.expect_error(409, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(event_count(&app).await, events);

    // A new key is a new request: this one overlaps the first booking.
    app.send(post("book-2", &body)).await.expect_error(409, "BOOKING_OVERLAP");
    // A refusal is an answer too: retrying it replays the refusal.
    let again = app.send(post("book-2", &body)).await;
    again.expect_error(409, "BOOKING_OVERLAP");
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Keys are scoped to their tenant: another tenant may use "book-1" for its own request.
    let other_tenant = app.create_tenant("idem-school").await;
    let usage = app
        .send(
            app.request(Method::POST, "/v1/usage", Some(&other_tenant.key))
                .header("Idempotency-Key", "book-1")
                .json(&json!({"metric": "sms", "quantity": 1, "idempotency_key": "u1"})),
        )
        .await;
    usage.expect(202);

    // A key that is not a sane token is a 400 naming the header.
    let bad = app.send(post(&"k".repeat(300), &body)).await;
    bad.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad.body["error"]["details"]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn concurrent_retries_of_one_key_run_the_command_once() {
    let app = spawn_app().await;
    let codes: Vec<String> = (0..1).map(|i| format!("race-{i}")).collect();
    let body = e2e::TestApp::tenant_body(&codes[0]);
    let before = event_count(&app).await;
    let replies = join_all((0..20).map(|_| {
        app.send(app.request(Method::POST, "/v1/tenants", Some(ADMIN_TOKEN)).header("Idempotency-Key", "signup-race").json(&body))
    }))
    .await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    // Every answer is either the one sign-up (first or replayed) or "still running, retry".
    for reply in &replies {
        match reply.status.as_u16() {
            201 => {}
            409 => assert_eq!(reply.code(), "IDEMPOTENCY_KEY_IN_USE", "{}", reply.body),
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert!(!created.is_empty());
    let ids: std::collections::HashSet<_> = created.iter().map(|r| r.body["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "one tenant, however many answers");
    // A retry after the race replays the same tenant and its one-time key.
    let retry =
        app.send(app.request(Method::POST, "/v1/tenants", Some(ADMIN_TOKEN)).header("Idempotency-Key", "signup-race").json(&body)).await;
    assert_eq!(retry.expect(201)["id"], created[0].body["id"]);
    assert_eq!(retry.body["api_key"], created[0].body["api_key"]);
    let tenants: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TenantCreated'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(tenants, 1);
    assert!(event_count(&app).await > before);
}

#[tokio::test]
async fn a_key_beyond_its_plans_rate_limit_gets_429_with_retry_after_and_others_are_unaffected() {
    let app = spawn_app().await;
    // A plan allowing 30 requests per minute.
    app.post(
        "/v1/plans",
        ADMIN_TOKEN,
        json!({"code": "tiny", "name": "Tiny", "monthly_price": "1.00", "limits": {"users": 1, "bookings_per_month": 1, "events": 1,
               "tickets_per_event": 1, "storage_mb": 1, "api_calls_per_month": 100}, "features": [], "rate_limit_per_minute": 30}),
    )
    .await
    .expect(201);
    let tiny = app.create_tenant_on("tiny-shop", "tiny").await;
    let other = app.create_tenant("busy-clinic").await;

    let replies = join_all((0..40).map(|_| app.get("/v1/subscription", &tiny.key))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), 40, "only 200s and 429s");
    // The bucket holds 30 and refills one every 2 s: the burst gets 30, maybe one more.
    assert!((30..=31).contains(&ok), "{ok} got through");
    for reply in &limited {
        reply.expect_error(429, "RATE_LIMITED");
        let retry_after: u64 = reply.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
        assert_eq!(reply.body["error"]["details"]["limit_per_minute"], 30);
        assert_eq!(reply.headers["ratelimit-limit"], "30");
        assert_eq!(reply.headers["ratelimit-remaining"], "0");
    }
    // Another tenant (starter: 200/min) and the admin are not held back by it.
    app.get("/v1/subscription", &other.key).await.expect(200);
    assert_eq!(app.get("/v1/subscription", &other.key).await.headers["ratelimit-limit"], "200");
    app.get(&format!("/v1/tenants/{}", tiny.id), ADMIN_TOKEN).await.expect(200);
    // Waiting as told gets a token back.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    app.get("/v1/subscription", &tiny.key).await.expect(200);
}

#[tokio::test]
async fn metrics_count_requests_commands_events_and_report_projection_lag() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("metrics-clinic").await;
    app.post("/v1/usage", &tenant.key, json!({"metric": "sms", "quantity": 2, "idempotency_key": "m1"})).await.expect(202);
    app.get(&format!("/v1/bookings/{}", uuid::Uuid::now_v7()), &tenant.key).await.expect_error(404, "NOT_FOUND");

    let response = app.request(Method::GET, "/metrics", None).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    // Route templates, not raw paths.
    assert!(has(r#"saas_ledger_http_requests_total{method="POST",route="/v1/usage",status="202"}"#), "{text}");
    assert!(has(r#"saas_ledger_http_requests_total{method="GET",route="/v1/bookings/{id}",status="404"}"#), "{text}");
    assert!(has("saas_ledger_http_request_duration_seconds_bucket{"), "{text}");
    assert!(has(r#"saas_ledger_commands_total{aggregate="Usage",outcome="committed"}"#), "{text}");
    assert!(has(r#"saas_ledger_events_appended_total{aggregate="Tenant"}"#), "{text}");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head").fetch_one(&app.pool).await.unwrap();
    assert!(text.lines().any(|l| l == format!("saas_ledger_log_head {head}")), "{text}");
    assert!(has(r#"saas_ledger_projection_lag{projection="usage""#), "{text}");
    assert!(has(r#"saas_ledger_projection_position{projection="tenants""#), "{text}");
}

/// The server pings a pooled connection only when it sat idle for a second (not before every
/// statement), and the writer keeps its connections between appends: connections that Postgres
/// ended while they were idle (a restart, an operator's `pg_terminate_backend`) are replaced
/// before they are used, so the next requests are answered as usual, not with 500s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_ended_while_idle_are_replaced_before_requests_use_them() {
    use sqlx::Connection;
    let app = spawn_app().await;
    let tenant = app.create_tenant("cut-clinic").await;
    let room = app.create_resource(&tenant.key, "room", 1).await;
    app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 2, "idempotency_key": "before"})).await.expect(202);

    // End every session of the server on its database, from a connection of our own.
    let url = format!("{}/{}", e2e::server_url(), app.db_name);
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                               WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(ended >= 2, "the writer's and the pool's sessions were ended ({ended})");
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;

    // Commands (through the writer) and reads (through the pool) are answered.
    for i in 0..5 {
        app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("after-{i}")}))
            .await
            .expect(202);
    }
    let booking = json!({"resource_id": room, "starts_at": "2031-05-01T09:00:00Z", "ends_at": "2031-05-01T10:00:00Z",
                         "customer": {"name": "Ada", "email": "ada@example.com"}});
    app.post("/v1/bookings", &tenant.key, booking).await.expect(201);
    let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
    assert_eq!(quota.expect(200)["used"], 7, "{}", quota.body);
}
