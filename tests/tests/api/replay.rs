//! Replay: an aggregate's state rebuilt through the domain at any version or instant, equal to
//! what the write side and the read models hold now.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

#[tokio::test]
async fn as_of_and_version_answers_follow_a_scripted_history() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-01-01T10:00:00Z").await;
    let created = app.create_tenant_raw(TestApp::tenant_body("replayed")).await.expect(201).clone();
    let tenant = TestTenant {
        id: created["id"].as_str().unwrap().parse().unwrap(),
        code: "replayed".into(),
        key: created["api_key"].as_str().unwrap().into(),
    };
    let sub = created["subscription_id"].as_str().unwrap().to_owned();
    app.set_clock("2027-01-15T10:00:00Z").await; // trial ends: first period
    app.set_clock("2027-01-20T10:00:00Z").await;
    app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "business"})).await.expect(200);
    app.set_clock("2027-01-25T10:00:00Z").await;
    app.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({"reason": "audit"})).await.expect(200);

    let at = |path: String| {
        let app = &app;
        let key = tenant.key.clone();
        async move { app.get(&path, &key).await.expect(200).clone() }
    };
    let subscription = |q: &str| at(format!("/v1/aggregates/Subscription/{sub}{q}"));
    assert_eq!(subscription("?version=1").await["state"]["status"], "trialing");
    assert_eq!(subscription("?as_of=2027-01-15T09:59:59Z").await["state"]["status"], "trialing");
    let first_period = subscription("?as_of=2027-01-15T10:00:00Z").await;
    assert_eq!(first_period["state"]["status"], "active");
    assert_eq!(first_period["state"]["invoices_issued"], 1);
    assert_eq!(first_period["state"]["plan"]["code"], "starter");
    assert_eq!(subscription("?as_of=2027-01-20T10:00:00Z").await["state"]["plan"]["code"], "business");
    assert_eq!(subscription("?version=0").await["version"], 0);

    let tenant_at = |q: &str| at(format!("/v1/aggregates/Tenant/{}{q}", tenant.id));
    assert_eq!(tenant_at("?as_of=2027-01-24T00:00:00Z").await["state"]["status"], "active");
    assert_eq!(tenant_at("").await["state"]["status"], "suspended");

    // Replaying now through the domain gives exactly what the write side loads and what the
    // read model folded (which keeps it compact: without the invoice books and payment ids).
    let now = subscription("").await;
    let full: domain::subscription::Subscription = serde_json::from_value(now["state"].clone()).unwrap();
    assert!(!full.invoice_books.is_empty(), "{}", now["state"]);
    let projected: sqlx::types::Json<Value> = sqlx::query_scalar("SELECT to_jsonb(state) FROM rm.subscriptions WHERE id = $1::uuid")
        .bind(&sub)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(serde_json::to_value(full.compact()).unwrap(), projected.0);
    let loaded = app.state.tenants().load(tenant.id).await.unwrap().unwrap();
    assert_eq!(tenant_at("").await["state"], serde_json::to_value(loaded).unwrap());

    // Other tenants see nothing; bad questions are 4xx.
    let other = app.create_tenant("someone-else").await;
    app.get(&format!("/v1/aggregates/Subscription/{sub}"), &other.key).await.expect_error(404, "NOT_FOUND");
    app.get(&format!("/v1/aggregates/Subscription/{sub}"), ADMIN_TOKEN).await.expect(200);
    app.get(&format!("/v1/aggregates/Nope/{sub}"), &tenant.key).await.expect_error(404, "NOT_FOUND");
    app.get(&format!("/v1/aggregates/Subscription/{sub}?as_of=x"), &tenant.key).await.expect_error(400, "VALIDATION_FAILED");
    app.get(&format!("/v1/aggregates/Subscription/{sub}?version=1&as_of=2027-01-01T00:00:00Z"), &tenant.key)
        .await
        .expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test]
async fn the_replay_command_prints_one_tenants_history_in_order() {
    let app = spawn_app_with(|c| c.test_clock = true).await;
    app.set_clock("2027-02-01T00:00:00Z").await;
    let tenant = app.create_tenant("cli-replayed").await;
    app.create_tenant("not-in-the-output").await;
    app.set_clock("2027-02-03T00:00:00Z").await;
    app.issue_key(&tenant.key, "member").await;
    let filter = |aggregate: Option<String>, from: Option<&str>, table: bool| api::cli::ReplayFilter {
        tenant_code: "cli-replayed".into(),
        from: from.map(|f| f.parse().unwrap()),
        to: None,
        aggregate,
        table,
    };
    let run = |f: api::cli::ReplayFilter| {
        let pool = app.pool.clone();
        async move {
            let mut out = Vec::new();
            api::cli::replay(&pool, &f, &mut out).await.unwrap();
            String::from_utf8(out).unwrap()
        }
    };
    let all: Vec<Value> = run(filter(None, None, false)).await.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = all.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["TenantCreated", "ApiKeyIssued", "SubscriptionStarted", "ApiKeyIssued"]);
    assert!(all.iter().all(|e| e["tenant_id"] == tenant.id.to_string()));
    assert!(all.windows(2).all(|w| w[0]["position"].as_i64() < w[1]["position"].as_i64()));
    let later = run(filter(None, Some("2027-02-02T00:00:00Z"), true)).await;
    assert_eq!(later.lines().count(), 2, "a header and one event: {later}");
    let (header, row) = (later.lines().next().unwrap(), later.lines().nth(1).unwrap());
    assert!(header.trim_start().starts_with("POSITION") && header.ends_with("SUMMARY"), "{header}");
    assert!(row.contains("issued with role member"), "{later}");
    // Columns line up with the header, however long the values.
    assert_eq!(row.find("Tenant"), header.find("AGGREGATE"), "{later}");
    assert_eq!(row.find("ApiKeyIssued").map(|i| row[..i].chars().count()), header.find("EVENT"), "{later}");
    let one = run(filter(Some(format!("Tenant:{}", tenant.id)), None, false)).await;
    assert_eq!(one.lines().count(), 3);
    let mut sink = Vec::new();
    let missing = api::cli::ReplayFilter { tenant_code: "nobody".into(), ..filter(None, None, false) };
    assert!(api::cli::replay(&app.pool, &missing, &mut sink).await.is_err());
}

#[tokio::test]
async fn an_old_event_version_is_upcast_everywhere_it_is_read() {
    let app = e2e::spawn_app().await;
    let tenant = app.create_tenant("from-the-past").await;
    // A suspension as release 1.0 stored it: no `source` field.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'Tenant', $1, max(sequence) + 1, 'TenantSuspended', '1.0',
                jsonb_build_object('type', 'TenantSuspended', 'reason', 'legacy suspension', 'suspended_at', '2026-06-01T00:00:00Z'),
                jsonb_build_object('tenant_id', $1, 'actor', 'admin', 'correlation_id', 'legacy', 'causation_id', 'legacy', 'occurred_at', '2026-06-01T00:00:00Z')
         FROM events WHERE aggregate_type = 'Tenant' AND aggregate_id = $1",
    )
    .bind(tenant.id.to_string())
    .execute(&app.pool)
    .await
    .unwrap();
    app.state.settle_all().await;

    // The read model (a projection reading through the upcaster).
    let status = app.get(&format!("/v1/tenants/{}", tenant.id), ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!((status["status"].as_str(), status["status_reason"].as_str()), (Some("suspended"), Some("legacy suspension")));
    let suspended_by: Option<String> =
        sqlx::query_scalar("SELECT suspended_by FROM rm.tenants WHERE id = $1").bind(tenant.id).fetch_one(&app.pool).await.unwrap();
    assert_eq!(suspended_by.as_deref(), Some("admin"));
    // Replay through the domain.
    let replayed = app.get(&format!("/v1/aggregates/Tenant/{}", tenant.id), ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(replayed["state"]["suspended_by"], "admin");
    // The write side loads it too: the admin can reactivate.
    let reactivated = app.post(&format!("/v1/tenants/{}/reactivate", tenant.id), ADMIN_TOKEN, json!({})).await;
    assert_eq!(reactivated.expect(200)["status"], "active");
    // The log keeps the event as stored, and the audit chain still verifies.
    let stored: String =
        sqlx::query_scalar("SELECT event_version FROM events WHERE event_type = 'TenantSuspended'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored, "1.0");
    assert_eq!(app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200)["valid"], true);
}
