//! Tenants through the API: sign-up, reading, lifecycle gates, branding, keys, metadata.

use e2e::{spawn_app, TestApp, ADMIN_TOKEN};
use futures::future::join_all;
use serde_json::json;

#[tokio::test]
async fn a_tenant_signed_up_by_the_admin_can_use_its_key_at_once() {
    let app = spawn_app().await;
    let reply = app.create_tenant_raw(TestApp::tenant_body("acme-clinic")).await;
    let created = reply.expect(201).clone();
    assert_eq!(created["code"], "acme-clinic");
    assert_eq!(created["status"], "active");
    assert!(created["subscription_id"].as_str().is_some());
    let key = created["api_key"].as_str().unwrap();
    assert!(key.starts_with("slk_"));
    assert_eq!(reply.headers["location"], format!("/v1/tenants/{}", created["id"].as_str().unwrap()).as_str());

    let own = app.get("/v1/tenant", key).await;
    let own = own.expect(200);
    assert_eq!(own["id"], created["id"]);
    assert_eq!(own["name"], "Tenant acme-clinic");
    assert_eq!(own["timezone"], "Europe/Zurich");
    assert_eq!(own["currency"], "EUR");
    assert_eq!(own["locale"], "de-CH");
    assert_eq!(own["tax_rate"], "8.1");
    assert_eq!(own["trial_days"], 14);
    assert_eq!(own["plan"], "starter");

    let by_admin = app.get(&format!("/v1/tenants/{}", created["id"].as_str().unwrap()), ADMIN_TOKEN).await;
    assert_eq!(by_admin.expect(200)["code"], "acme-clinic");

    // Only the hash is stored: the secret appears nowhere in the database.
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
        .bind(key)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
}

#[tokio::test]
async fn sign_up_defaults_apply_when_optional_fields_are_left_out() {
    let app = spawn_app().await;
    let reply =
        app.create_tenant_raw(json!({"code": "minimal", "name": "Minimal", "billing_email": "a@b.example", "plan": "professional"})).await;
    let key = reply.expect(201)["api_key"].as_str().unwrap().to_owned();
    let own = app.get("/v1/tenant", &key).await;
    let own = own.expect(200);
    assert_eq!(own["trial_days"], 14);
    assert_eq!(own["tax_rate"], "0");
    assert_eq!(own["billing_period"], "monthly");
    assert_eq!(own["timezone"], "UTC");
}

#[tokio::test]
async fn twenty_concurrent_sign_ups_with_one_code_give_exactly_one_201() {
    let app = spawn_app().await;
    let replies = join_all((0..20).map(|_| app.create_tenant_raw(TestApp::tenant_body("same-code")))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "statuses: {:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    for reply in replies.iter().filter(|r| r.status != 201) {
        reply.expect_error(409, "CONFLICT");
        assert_eq!(reply.body["error"]["details"]["field"], "code");
    }
    let listed = app.get("/v1/tenants?limit=100", ADMIN_TOKEN).await;
    assert_eq!(listed.expect(200)["data"].as_array().unwrap().len(), 1);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'TenantCreated'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn listing_tenants_pages_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_tenant(&format!("tenant-{i}")).await;
    }
    let first = app.get("/v1/tenants?limit=2", ADMIN_TOKEN).await;
    let first = first.expect(200).clone();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["has_more"], true);
    let mut seen: Vec<String> = first["data"].as_array().unwrap().iter().map(|t| t["code"].as_str().unwrap().to_owned()).collect();
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let page = app.get(&format!("/v1/tenants?limit=2&cursor={cursor}"), ADMIN_TOKEN).await;
        let page = page.expect(200).clone();
        seen.extend(page["data"].as_array().unwrap().iter().map(|t| t["code"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["tenant-0", "tenant-1", "tenant-2", "tenant-3", "tenant-4"]);
    app.get("/v1/tenants?limit=0", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    app.get("/v1/tenants?limit=abc", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test]
async fn suspension_gates_commands_with_402_but_not_reads_and_reactivation_lifts_it() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("gated").await;
    let suspended = app.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({"reason": "chargeback"})).await;
    let suspended = suspended.expect(200);
    assert_eq!(suspended["status"], "suspended");
    assert_eq!(suspended["status_reason"], "chargeback");

    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect_error(402, "TENANT_SUSPENDED");
    app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": "#112233"})).await.expect_error(402, "TENANT_SUSPENDED");
    app.get("/v1/tenant", &tenant.key).await.expect(200);

    app.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    let reactivated = app.post(&format!("/v1/tenants/{}/reactivate", tenant.id), ADMIN_TOKEN, json!({})).await;
    assert_eq!(reactivated.expect(200)["status"], "active");
    app.post(&format!("/v1/tenants/{}/reactivate", tenant.id), ADMIN_TOKEN, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect(201);
}

#[tokio::test]
async fn a_cancelled_tenant_gets_403_on_commands_and_cannot_come_back() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("leaving").await;
    let cancelled = app.post(&format!("/v1/tenants/{}/cancel", tenant.id), ADMIN_TOKEN, json!({"reason": "moved away"})).await;
    assert_eq!(cancelled.expect(200)["status"], "cancelled");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "member"})).await.expect_error(403, "TENANT_CANCELLED");
    app.get("/v1/tenant", &tenant.key).await.expect(200);
    app.post(&format!("/v1/tenants/{}/reactivate", tenant.id), ADMIN_TOKEN, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    app.post(&format!("/v1/tenants/{}/suspend", tenant.id), ADMIN_TOKEN, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
}

#[tokio::test]
async fn lifecycle_routes_on_unknown_tenants_are_404() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::now_v7();
    app.post(&format!("/v1/tenants/{missing}/suspend"), ADMIN_TOKEN, json!({})).await.expect_error(404, "NOT_FOUND");
    app.post("/v1/tenants/not-a-uuid/suspend", ADMIN_TOKEN, json!({})).await.expect_error(404, "NOT_FOUND");
    app.get(&format!("/v1/tenants/{missing}"), ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn branding_is_validated_and_replaced() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("branded").await;
    let body = json!({"primary_color": "#1a2b3c", "secondary_color": "#FFFFFF", "logo_url": "https://cdn.example.com/logo.png", "custom_domain": "Book.Branded.example"});
    let updated = app.put("/v1/tenant/branding", &tenant.key, body).await;
    let branding = updated.expect(200)["branding"].clone();
    assert_eq!(
        branding,
        json!({"primary_color": "#1A2B3C", "secondary_color": "#FFFFFF", "logo_url": "https://cdn.example.com/logo.png", "custom_domain": "book.branded.example"})
    );

    let bad = app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": "red"})).await;
    bad.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad.body["error"]["details"]["field"], "primary_color");
    app.put("/v1/tenant/branding", &tenant.key, json!({"logo_url": "javascript:alert(1)"})).await.expect_error(400, "VALIDATION_FAILED");

    let cleared = app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": "#000000"})).await;
    assert_eq!(cleared.expect(200)["branding"]["logo_url"], serde_json::Value::Null);
}

#[tokio::test]
async fn every_event_carries_tenant_actor_correlation_causation_and_time() {
    let app = spawn_app().await;
    let created = app
        .send(
            app.request(reqwest::Method::POST, "/v1/tenants", Some(ADMIN_TOKEN))
                .header("X-Request-Id", "req-signup-1")
                .json(&TestApp::tenant_body("traced")),
        )
        .await;
    assert_eq!(created.headers["x-request-id"], "req-signup-1");
    let body = created.expect(201).clone();
    let key = body["api_key"].as_str().unwrap();
    let key_id = body["api_key_id"].as_str().unwrap();
    let issued = app
        .send(
            app.request(reqwest::Method::POST, "/v1/api-keys", Some(key))
                .header("X-Request-Id", "req-key-2")
                .json(&json!({"role": "member"})),
        )
        .await;
    issued.expect(201);

    let events: Vec<serde_json::Value> = app.all_events().await.into_iter().filter(|e| e["aggregate_type"] != "Plan").collect();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["TenantCreated", "ApiKeyIssued", "SubscriptionStarted", "ApiKeyIssued"]);
    for event in &events {
        let metadata = &event["metadata"];
        assert_eq!(metadata["tenant_id"], body["id"]);
        assert_eq!(event["tenant_id"], body["id"]);
        assert!(metadata["occurred_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{metadata}");
        assert!(metadata["causation_id"].as_str().is_some());
    }
    assert_eq!(events[0]["metadata"]["actor"], "admin");
    assert_eq!(events[0]["metadata"]["correlation_id"], "req-signup-1");
    assert_eq!(events[1]["event_type"], "ApiKeyIssued");
    assert_eq!(events[2]["metadata"]["correlation_id"], "req-signup-1");
    assert_eq!(events[3]["metadata"]["actor"], format!("key:{key_id}"));
    assert_eq!(events[3]["metadata"]["correlation_id"], "req-key-2");

    // A generated request id is a UUID, and junk ids are replaced rather than stored.
    let reply = app.send(app.request(reqwest::Method::GET, "/v1/tenant", Some(key)).header("X-Request-Id", "bad id with spaces")).await;
    let id = reply.headers["x-request-id"].to_str().unwrap();
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id}");
}

#[tokio::test]
async fn the_events_are_append_only_in_the_database() {
    let app = spawn_app().await;
    app.create_tenant("immutable").await;
    let update = sqlx::query("UPDATE events SET payload = '{}' WHERE sequence = 1").execute(&app.pool).await;
    assert!(update.is_err(), "an event was edited");
    let delete = sqlx::query("DELETE FROM events").execute(&app.pool).await;
    assert!(delete.is_err(), "events were deleted");
    let renumber = sqlx::query("UPDATE events SET position = position + 100").execute(&app.pool).await;
    assert!(renumber.is_err(), "positions were changed");
}
