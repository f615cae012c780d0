//! The audit trail: entries with actor and correlation ids, a per-tenant hash chain, and a
//! verification that names the first edited or deleted event or entry.

use e2e::{spawn_app, TestApp, ADMIN_TOKEN};
use serde_json::json;

async fn busy_tenant(app: &TestApp, code: &str) -> e2e::TestTenant {
    let tenant = app.create_tenant(code).await;
    app.issue_key(&tenant.key, "member").await;
    app.put("/v1/tenant/branding", &tenant.key, json!({"primary_color": "#123456"})).await.expect(200);
    app.post("/v1/usage", &tenant.key, json!({"metric": "sms", "quantity": 2, "idempotency_key": format!("{code}-1")})).await.expect(202);
    tenant
}

#[tokio::test]
async fn every_event_has_a_chained_audit_entry_and_the_chain_verifies() {
    let app = spawn_app().await;
    let a = busy_tenant(&app, "audited-a").await;
    let b = busy_tenant(&app, "audited-b").await;
    let entries = app.get("/v1/audit?limit=100", &a.key).await.expect(200)["data"].as_array().unwrap().clone();
    let types: Vec<&str> = entries.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["TenantCreated", "ApiKeyIssued", "SubscriptionStarted", "ApiKeyIssued", "BrandingUpdated", "UsageRecorded"]);
    assert!(entries.iter().all(|e| e["tenant_id"] == a.id.to_string()));
    assert_eq!(entries[0]["prev_hash"], projections::audit::GENESIS);
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "entries chain");
    }
    assert_eq!(entries[0]["summary"], "tenant audited-a (Tenant audited-a) signed up on plan starter");
    assert_eq!(entries[0]["actor"], "admin");
    let by_type = app.get("/v1/audit?aggregate_type=Usage", &a.key).await.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(by_type.len(), 1);
    let page = app.get("/v1/audit?limit=2", &a.key).await.expect(200).clone();
    let next = app.get(&format!("/v1/audit?limit=2&cursor={}", page["next_cursor"].as_str().unwrap()), &a.key).await;
    assert_eq!(next.expect(200)["data"][0]["position"], entries[2]["position"]);

    for token in [a.key.as_str(), b.key.as_str(), ADMIN_TOKEN] {
        let verified = app.get("/v1/audit/verify", token).await.expect(200).clone();
        assert_eq!(verified["valid"], true, "{verified}");
        assert_eq!(verified["first_bad_position"], serde_json::Value::Null);
        assert!(verified["checked"].as_u64().unwrap() >= 6);
    }
}

#[tokio::test]
async fn an_edited_event_is_named_by_verify() {
    let app = spawn_app().await;
    let tenant = busy_tenant(&app, "tampered-event").await;
    let entries = app.get("/v1/audit?limit=100", &tenant.key).await.expect(200)["data"].as_array().unwrap().clone();
    let target = entries[2]["position"].as_i64().unwrap();
    // An attacker with database rights gets past the append-only guard and edits a payload.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only_update").execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{role}', '\"owner\"') WHERE position = $1")
        .bind(target)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only_update").execute(&app.pool).await.unwrap();
    let verified = app.get("/v1/audit/verify", &tenant.key).await.expect(200).clone();
    assert_eq!((verified["valid"].as_bool(), verified["first_bad_position"].as_i64()), (Some(false), Some(target)));
    let platform = app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(platform["first_bad_position"].as_i64(), Some(target));
}

#[tokio::test]
async fn an_edited_or_deleted_audit_row_is_named_by_verify() {
    let app = spawn_app().await;
    let tenant = busy_tenant(&app, "tampered-audit").await;
    let entries = app.get("/v1/audit?limit=100", &tenant.key).await.expect(200)["data"].as_array().unwrap().clone();
    let edited = entries[1]["position"].as_i64().unwrap();
    sqlx::query("UPDATE rm.audit_entries SET actor = 'someone-else' WHERE position = $1").bind(edited).execute(&app.pool).await.unwrap();
    let verified = app.get("/v1/audit/verify", &tenant.key).await.expect(200).clone();
    assert_eq!(verified["first_bad_position"].as_i64(), Some(edited));

    let app = spawn_app().await;
    let tenant = busy_tenant(&app, "deleted-audit").await;
    let entries = app.get("/v1/audit?limit=100", &tenant.key).await.expect(200)["data"].as_array().unwrap().clone();
    let last = entries.last().unwrap()["position"].as_i64().unwrap();
    sqlx::query("DELETE FROM rm.audit_entries WHERE position = $1").bind(last).execute(&app.pool).await.unwrap();
    let verified = app.get("/v1/audit/verify", &tenant.key).await.expect(200).clone();
    assert_eq!(verified["first_bad_position"].as_i64(), Some(last), "even the chain's last entry is missed");
}

/// Entries reach the table through `COPY`'s text format: backslashes (`\N` is that format's
/// NULL), quotes and non-ASCII text in what people typed come back exactly, and the chain over
/// them verifies. (The API refuses control characters; their escaping has a unit test.)
#[tokio::test]
async fn text_with_backslashes_and_quotes_is_kept_exactly() {
    let app = spawn_app().await;
    let mut body = TestApp::tenant_body("escaped");
    body["name"] = json!(r#"Praxis "Süd" \ Zürich"#);
    let created = app.create_tenant_raw(body).await.expect(201).clone();
    let id = created["id"].as_str().unwrap().to_owned();
    let reason = r"late payment \N \\ done";
    app.post(&format!("/v1/tenants/{id}/suspend"), ADMIN_TOKEN, json!({ "reason": reason })).await.expect(200);
    let entries = app.get("/v1/audit?limit=100&aggregate_type=Tenant", ADMIN_TOKEN).await.expect(200)["data"].as_array().unwrap().clone();
    let summaries: Vec<&str> = entries.iter().map(|e| e["summary"].as_str().unwrap()).collect();
    assert!(summaries.contains(&r#"tenant escaped (Praxis "Süd" \ Zürich) signed up on plan starter"#), "{summaries:?}");
    assert!(summaries.contains(&format!("tenant suspended: {reason}").as_str()), "{summaries:?}");
    let verified = app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!(verified["valid"], true, "{verified}");
}

/// A rebuild chains thousands of events with the next range read and chained ahead on
/// another connection (ranges of 6,000, tenants interleaved): the rebuilt chain is the live
/// one, entry for entry, and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_chain_equals_the_live_one_entry_for_entry() {
    let app = spawn_app().await;
    let mut tenants = Vec::new();
    for code in ["chain-a", "chain-b", "chain-c"] {
        tenants.push(app.create_tenant_on(code, "enterprise").await);
    }
    // More than three of the audit's batches (6,000 positions), so that ranges are chained ahead
    // (facts on their own, seeded in SQL: a batch through the API is one event), and batches.
    for round in 0..6 {
        for tenant in &tenants {
            app.seed_usage(&tenant.id.to_string(), &format!("{}-{round}-", tenant.code), 1000).await;
            let records: Vec<_> = (0..10)
                .map(|i| json!({"metric": "api_calls", "quantity": 1 + i, "idempotency_key": format!("{}-b{round}-{i}", tenant.code)}))
                .collect();
            app.post("/v1/usage/batch", &tenant.key, json!({ "records": records })).await.expect(202);
        }
    }
    assert_eq!(app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200)["valid"], true);
    let chain = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (i64, uuid::Uuid, String, String, String)>(
            "SELECT position, tenant_id, summary, prev_hash, hash FROM rm.audit_entries ORDER BY position",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let live = chain(app.pool.clone()).await;
    assert!(live.len() > 18_000, "{}", live.len());

    app.post("/v1/admin/projections/audit/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await.expect(200).as_array().unwrap().clone();
        if runs.iter().any(|r| r["name"] == "audit" && r["generation"] == 2 && r["status"] == "live") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the rebuild did not finish: {runs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let rebuilt = chain(app.pool.clone()).await;
    assert_eq!(rebuilt.len(), live.len());
    assert!(rebuilt == live, "the rebuilt chain differs from the live one");
    for tenant in &tenants {
        let verified = app.get("/v1/audit/verify", &tenant.key).await.expect(200).clone();
        assert_eq!(verified["valid"], true, "{verified}");
    }
    let metrics = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    let ahead: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("saas_ledger_audit_chained_ahead_events_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(ahead > 0.0, "nothing was chained ahead");
}

/// A large payload (a usage batch of 1,000 facts) is digested in Postgres and summarised from
/// what the summary reads: the entry is the one the full payload would give, and an edit of
/// the payload is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_digested_in_postgres_exactly_as_the_server_digests_it() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("audited-batch", "enterprise").await;
    let records: Vec<_> = (0..1000)
        .map(|i| json!({"metric": if i % 5 < 3 { "api_calls" } else { "sms" }, "quantity": 1 + i % 7, "idempotency_key": format!("big-{i}")}))
        .collect();
    app.post("/v1/usage/batch", &tenant.key, json!({ "records": records })).await.expect(202);
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE aggregate_type = 'UsageBatch'").fetch_one(&app.pool).await.unwrap();
    let read = projections::audit::read_raw(&app.pool, position - 1, position, None).await.unwrap().remove(0);
    assert!(read.digest.is_some(), "a 1,000-fact batch is large");
    assert!(read.payload.len() < 40_000, "{} bytes came to the server", read.payload.len());
    let full: (String,) =
        sqlx::query_as("SELECT payload::text FROM events WHERE position = $1").bind(position).fetch_one(&app.pool).await.unwrap();
    let whole = projections::audit::RawEvent { payload: full.0, digest: None, ..read.clone() };
    assert_eq!(projections::audit::event_digest(&read), projections::audit::event_digest(&whole));
    let genesis = projections::audit::GENESIS.to_owned();
    assert_eq!(projections::audit::entry(&read, genesis.clone()), projections::audit::entry(&whole, genesis));
    let entry = app.get("/v1/audit?aggregate_type=UsageBatch", &tenant.key).await.expect(200)["data"][0].clone();
    assert_eq!(entry["summary"], "1000 usage facts recorded in a batch: 600 api_calls, 400 sms");
    assert_eq!(entry["event_digest"].as_str(), read.digest.as_deref());
    assert_eq!(app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200)["valid"], true);

    // An edit deep inside the payload changes the digest Postgres computes.
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only_update").execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{facts,999,quantity}', '1000') WHERE position = $1")
        .bind(position)
        .execute(&app.pool)
        .await
        .unwrap();
    let verify = app.get("/v1/audit/verify", ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!((verify["valid"].as_bool(), verify["first_bad_position"].as_i64()), (Some(false), Some(position)), "{verify}");
}
