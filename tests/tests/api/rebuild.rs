//! Zero-downtime rebuilds: every projection rebuilt while a writer keeps writing and readers
//! keep reading; no read fails or sees a smaller model, and afterwards every model equals a
//! fresh fold of the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{spawn_app, TestApp, ADMIN_TOKEN};
use serde_json::{json, Value};

/// Every `rm` view's rows, in a stable order.
async fn models(app: &TestApp) -> Value {
    let views: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.views WHERE table_schema = 'rm' ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut all = serde_json::Map::new();
    for view in views {
        let rows: Value = sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(t ORDER BY t::text), '[]') FROM rm.{view} t"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
        all.insert(view, rows);
    }
    Value::Object(all)
}

async fn wait_until_generation(app: &TestApp, generation: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
        let runs = runs.as_array().unwrap();
        if runs.iter().all(|r| r["status"] == "live" && r["generation"].as_i64() == Some(generation)) {
            return;
        }
        assert!(Instant::now() < deadline, "rebuild did not finish: {runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilding_everything_under_load_never_disturbs_readers() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("under-load", "enterprise").await;
    let room = app.create_resource(&tenant.key, "room", 2).await;
    for i in 0..200 {
        app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("pre-{i}")}))
            .await
            .expect(202);
    }
    let writing = AtomicBool::new(true);
    let writer = async {
        let mut i = 0;
        while writing.load(Ordering::SeqCst) {
            app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("during-{i}")}))
                .await
                .expect(202);
            if i % 10 == 0 {
                let start = chrono::DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z").unwrap() + chrono::Duration::hours(i);
                app.book(&tenant.key, &room, &start.to_rfc3339(), &(start + chrono::Duration::minutes(30)).to_rfc3339(), 1)
                    .await
                    .expect(201);
            }
            i += 1;
        }
        i
    };
    let reader = async {
        let (mut reads, mut last_used, mut last_bookings) = (0, 0, 0);
        while writing.load(Ordering::SeqCst) {
            let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
            let used = quota.expect(200)["used"].as_u64().unwrap();
            assert!(used >= last_used, "the usage model shrank from {last_used} to {used}");
            last_used = used;
            let bookings = app.get("/v1/bookings?limit=100", &tenant.key).await;
            let count = bookings.expect(200)["data"].as_array().unwrap().len();
            assert!(count >= last_bookings, "the bookings model shrank");
            last_bookings = count;
            app.get("/v1/tenant", &tenant.key).await.expect(200);
            app.get("/v1/subscription", &tenant.key).await.expect(200);
            assert!(app.get("/v1/plans", &tenant.key).await.expect(200).as_array().unwrap().len() >= 4);
            reads += 1;
        }
        reads
    };
    let rebuild = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.post("/v1/admin/projections/all/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
        wait_until_generation(&app, 2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        writing.store(false, Ordering::SeqCst);
    };
    let (written, reads, ()) = tokio::join!(writer, reader, rebuild);
    assert!(written > 0 && reads > 0);

    // Every model equals a fresh fold of the whole log.
    app.state.settle_all().await;
    let live = models(&app).await;
    app.post("/v1/admin/projections/all/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    wait_until_generation(&app, 3).await;
    let fresh = models(&app).await;
    assert_eq!(live, fresh);
    assert_eq!(app.get("/v1/quota/api_calls", &tenant.key).await.expect(200)["used"].as_u64(), Some(200 + written as u64));
}

#[tokio::test]
async fn a_projection_stops_at_an_event_it_cannot_apply_and_says_so() {
    let app = spawn_app().await;
    app.create_tenant("before-the-poison").await;
    // An event whose payload the tenants projection cannot read (as a bug or a bad migration
    // would leave it).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Tenant', gen_random_uuid()::text, 1, 'TenantCreated', '1.0', '{\"type\": \"TenantCreated\", \"code\": 42}', '{}')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let poison: i64 = loop {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM events WHERE payload ->> 'code' = '42'").fetch_one(&app.pool).await.unwrap();
        if let Some(p) = position {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let tenants = loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).clone();
        let tenants = runs.as_array().unwrap().iter().find(|r| r["name"] == "tenants").unwrap().clone();
        if !tenants["last_error"].is_null() {
            break tenants;
        }
        assert!(Instant::now() < deadline, "no error recorded: {runs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(tenants["last_error_position"].as_i64(), Some(poison));
    assert_eq!(tenants["position"].as_i64(), Some(poison - 1), "stopped just before, nothing skipped");
    assert!(tenants["lag"].as_i64().unwrap() >= 1);
    // Other projections are not held up: they move past the event.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let audit: i64 = sqlx::query_scalar("SELECT position FROM projection_runs WHERE name = 'audit' AND status = 'live'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if audit >= poison {
            break;
        }
        assert!(Instant::now() < deadline, "the audit projection was held up at {audit}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
