//! GDPR: export of everything a tenant owns, and erasure by crypto-shredding.

use e2e::{spawn_app, ADMIN_TOKEN};
use serde_json::json;

/// Every text column of every table and view in `schema`, searched for `needle`.
async fn occurrences(app: &e2e::TestApp, needle: &str) -> Vec<String> {
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.table_schema, c.table_name, c.column_name, c.data_type FROM information_schema.columns c
         WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
           AND c.data_type IN ('text', 'jsonb', 'json', 'character varying', 'bytea')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for (schema, table, column, data_type) in columns {
        let test = if data_type == "bytea" {
            format!("position(convert_to($1, 'UTF8') in \"{column}\") > 0")
        } else {
            format!("strpos(\"{column}\"::text, $1) > 0")
        };
        let hit: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM \"{schema}\".\"{table}\" WHERE {test})"))
            .bind(needle)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if hit {
            found.push(format!("{schema}.{table}.{column}"));
        }
    }
    found
}

#[tokio::test]
async fn export_holds_everything_and_erasure_leaves_no_readable_personal_data_while_the_chain_stays_valid() {
    let app = spawn_app().await;
    let mut body = e2e::TestApp::tenant_body("gdpr-clinic");
    body["billing_email"] = json!("accounts@gdpr-clinic.example");
    let created = app.create_tenant_raw(body).await;
    let tenant_id = created.expect(201)["id"].as_str().unwrap().to_owned();
    let key = created.body["api_key"].as_str().unwrap().to_owned();
    let other = app.create_tenant("other-clinic").await;
    let room = app.create_resource(&key, "room", 1).await;
    // With an Idempotency-Key, so the stored response (which names the customer) is searched too.
    let booking = app
        .send(app.request(reqwest::Method::POST, "/v1/bookings", Some(&key)).header("Idempotency-Key", "booking-1").json(&json!({
            "resource_id": room, "starts_at": "2031-05-01T09:00:00Z", "ends_at": "2031-05-01T10:00:00Z",
            "customer": {"name": "Grace Hopperfield", "email": "grace.hopperfield@patients.example"}})))
        .await;
    let booking_id = booking.expect(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(booking.body["customer"], json!({"name": "Grace Hopperfield", "email": "grace.hopperfield@patients.example"}));
    app.post("/v1/usage", &key, json!({"metric": "sms", "quantity": 3, "idempotency_key": "sms-1"})).await.expect(202);
    let other_room = app.create_resource(&other.key, "room", 1).await;
    app.post(
        "/v1/bookings",
        &other.key,
        json!({"resource_id": other_room, "starts_at": "2031-05-01T09:00:00Z", "ends_at": "2031-05-01T10:00:00Z",
               "customer": {"name": "Alan Turingson", "email": "alan@patients.example"}}),
    )
    .await
    .expect(201);

    // The search finds what is stored in clear (the tenant code is not personal data)...
    assert!(occurrences(&app, "other-clinic").await.contains(&"public.events.payload".to_owned()));
    // ... and personal data is never stored in clear, not even before erasure.
    for needle in ["Grace Hopperfield", "grace.hopperfield@patients.example", "accounts@gdpr-clinic.example"] {
        assert_eq!(occurrences(&app, needle).await, Vec::<String>::new(), "{needle} stored in clear");
    }

    // The export: the whole tenant, personal data readable.
    let export = app.get("/v1/tenant/export", &key).await;
    let doc = export.expect(200);
    assert_eq!(doc["tenant"]["id"], tenant_id.as_str());
    assert_eq!(doc["tenant"]["billing_email"], "accounts@gdpr-clinic.example");
    assert_eq!(doc["subscription"]["status"], "trialing");
    assert_eq!(doc["bookings"][0]["id"], booking_id.as_str());
    assert_eq!(doc["bookings"][0]["customer"]["name"], "Grace Hopperfield");
    assert_eq!(doc["usage"][0]["metric"], "sms");
    assert_eq!(doc["resources"].as_array().unwrap().len(), 1);
    assert!(doc["api_keys"][0].get("key_hash").is_none(), "no key hashes in an export");
    assert!(doc["audit"].as_array().unwrap().len() >= 4);
    assert!(doc["invoices"].is_array());
    assert!(!doc.to_string().contains("Alan"), "another tenant's data leaked into the export");
    // Only managers export; a readonly key may not.
    let readonly = app.issue_key(&key, "readonly").await;
    app.get("/v1/tenant/export", &readonly).await.expect_error(403, "FORBIDDEN");

    // Erasure: tenant keys may not, the admin may, twice with the same answer.
    app.post(&format!("/v1/tenants/{tenant_id}/erase"), &key, json!({})).await.expect_error(403, "FORBIDDEN");
    let erased = app.post(&format!("/v1/tenants/{tenant_id}/erase"), ADMIN_TOKEN, json!({})).await;
    assert_eq!(erased.expect(200)["status"], "erased");
    assert_eq!(erased.body["billing_email"], serde_json::Value::Null);
    app.post(&format!("/v1/tenants/{tenant_id}/erase"), ADMIN_TOKEN, json!({})).await.expect(200);
    app.post(&format!("/v1/tenants/{}/erase", uuid::Uuid::now_v7()), ADMIN_TOKEN, json!({})).await.expect_error(404, "NOT_FOUND");

    // Commands are refused; reads show no personal data anywhere.
    app.post("/v1/usage", &key, json!({"metric": "sms", "quantity": 1, "idempotency_key": "sms-2"}))
        .await
        .expect_error(403, "TENANT_CANCELLED");
    let admin_for_it = app
        .send(
            app.request(reqwest::Method::POST, "/v1/usage", Some(ADMIN_TOKEN))
                .header("X-Tenant-ID", &tenant_id)
                .json(&json!({"metric": "sms", "quantity": 1, "idempotency_key": "sms-3"})),
        )
        .await;
    admin_for_it.expect_error(403, "TENANT_CANCELLED");
    let read = app.get(&format!("/v1/bookings/{booking_id}"), &key).await;
    assert_eq!(read.expect(200)["customer"], json!({"name": null, "email": null}));
    let export = app.get("/v1/tenant/export", &key).await;
    let doc = export.expect(200).to_string();
    assert!(!doc.contains("Grace") && !doc.contains("grace.hopperfield") && !doc.contains("accounts@gdpr-clinic"), "{doc}");
    let subscription = app.get("/v1/subscription", &key).await;
    assert_eq!(subscription.expect(200)["status"], "cancelled");

    // The raw log still holds the sealed values, which no key opens any more: the only copy of
    // the key is gone.
    let key_row: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE tenant_id = $1::uuid")
        .bind(&tenant_id)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
    assert_eq!(key_row, Some(None));
    let sealed: String = sqlx::query_scalar(
        "SELECT payload->'customer'->>'email' FROM events WHERE aggregate_type = 'Booking' AND aggregate_id = $1 AND event_type = 'BookingConfirmed'",
    )
    .bind(&booking_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(sealed.starts_with("pii1:"), "{sealed}");

    // A replay of the log through the domain works, and shows nothing readable either.
    let replayed = app.get(&format!("/v1/aggregates/Booking/{booking_id}"), ADMIN_TOKEN).await;
    assert!(!replayed.expect(200).to_string().contains("Grace"));

    // The log is append-only and the audit chain verifies.
    let verify = app.get("/v1/audit/verify", ADMIN_TOKEN).await;
    assert_eq!(verify.expect(200)["valid"], true, "{}", verify.body);
    let verify = app.get("/v1/audit/verify", &key).await;
    assert_eq!(verify.expect(200)["valid"], true, "{}", verify.body);

    // The other tenant is untouched.
    let other_export = app.get("/v1/tenant/export", &other.key).await;
    assert_eq!(other_export.expect(200)["bookings"][0]["customer"]["name"], "Alan Turingson");

    // A rebuild of every projection after the erasure still has nothing readable.
    app.post("/v1/admin/projections/all/rebuild", ADMIN_TOKEN, json!({})).await.expect(202);
    for _ in 0..200 {
        let runs = app.get("/v1/admin/projections", ADMIN_TOKEN).await;
        if runs.body.as_array().unwrap().iter().all(|r| r["status"] == "live") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let read = app.get(&format!("/v1/bookings/{booking_id}"), &key).await;
    assert_eq!(read.expect(200)["customer"], json!({"name": null, "email": null}));
    for needle in ["Grace Hopperfield", "grace.hopperfield@patients.example", "accounts@gdpr-clinic.example"] {
        assert_eq!(occurrences(&app, needle).await, Vec::<String>::new(), "{needle} readable after erasure");
    }
}
