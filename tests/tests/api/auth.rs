//! Authentication, roles, tenant isolation and key revocation.

use e2e::{spawn_app, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn requests_without_valid_credentials_are_401() {
    let app = spawn_app().await;
    app.send(app.request(Method::GET, "/v1/tenants", None)).await.expect_error(401, "UNAUTHENTICATED");
    app.get("/v1/tenants", "wrong-token").await.expect_error(401, "UNAUTHENTICATED");
    app.get("/v1/tenant", "slk_0000000000000000000000000000000000000000000000000000000000000000")
        .await
        .expect_error(401, "UNAUTHENTICATED");
    app.send(app.request(Method::GET, "/v1/tenants", None).header("Authorization", "Basic YWRtaW46YWRtaW4="))
        .await
        .expect_error(401, "UNAUTHENTICATED");
}

#[tokio::test]
async fn tenant_keys_cannot_use_admin_routes() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("plain").await;
    app.get("/v1/tenants", &tenant.key).await.expect_error(403, "FORBIDDEN");
    app.post("/v1/tenants", &tenant.key, e2e::TestApp::tenant_body("sneaky")).await.expect_error(403, "FORBIDDEN");
    app.post(&format!("/v1/tenants/{}/suspend", tenant.id), &tenant.key, json!({})).await.expect_error(403, "FORBIDDEN");
    app.get("/v1/admin/projections", &tenant.key).await.expect_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn a_readonly_key_can_read_but_not_write() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("readers").await;
    let readonly = app.issue_key(&tenant.key, "readonly").await;
    app.get("/v1/tenant", &readonly).await.expect(200);
    app.get("/v1/api-keys", &readonly).await.expect(200);
    app.post("/v1/api-keys", &readonly, json!({"role": "readonly"})).await.expect_error(403, "FORBIDDEN");
    app.put("/v1/tenant/branding", &readonly, json!({})).await.expect_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn roles_limit_which_keys_can_be_issued() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("roles").await;
    let admin_key = app.issue_key(&tenant.key, "admin").await;
    let member_key = app.issue_key(&admin_key, "member").await;
    app.post("/v1/api-keys", &admin_key, json!({"role": "owner"})).await.expect_error(403, "FORBIDDEN");
    app.post("/v1/api-keys", &member_key, json!({"role": "member"})).await.expect_error(403, "FORBIDDEN");
    app.post("/v1/api-keys", &tenant.key, json!({"role": "root"})).await.expect_error(400, "VALIDATION_FAILED");
    app.issue_key(&tenant.key, "owner").await;
}

#[tokio::test]
async fn other_tenants_data_is_404_and_a_foreign_x_tenant_id_is_403() {
    let app = spawn_app().await;
    let a = app.create_tenant("tenant-a").await;
    let b = app.create_tenant("tenant-b").await;
    app.get(&format!("/v1/tenants/{}", b.id), &a.key).await.expect_error(404, "NOT_FOUND");
    app.get(&format!("/v1/tenants/{}", a.id), &a.key).await.expect(200);
    app.send(app.request(Method::GET, "/v1/tenant", Some(&a.key)).header("X-Tenant-ID", b.id.to_string()))
        .await
        .expect_error(403, "FORBIDDEN");
    app.send(app.request(Method::GET, "/v1/tenant", Some(&a.key)).header("X-Tenant-ID", a.id.to_string())).await.expect(200);

    // B's key id does not exist for A.
    let b_keys = app.get("/v1/api-keys", &b.key).await;
    let b_key_id = b_keys.expect(200)["data"][0]["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/v1/api-keys/{b_key_id}"), &a.key).await.expect_error(404, "NOT_FOUND");
    app.get("/v1/tenant", &b.key).await.expect(200);

    // A's event log holds only A's events.
    let response = app.request(Method::GET, "/v1/events", Some(&a.key)).send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["tenant_id"], a.id.to_string());
    }
}

#[tokio::test]
async fn the_admin_acts_for_a_tenant_through_x_tenant_id() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("assisted").await;
    let own = app.send(app.request(Method::GET, "/v1/tenant", Some(ADMIN_TOKEN)).header("X-Tenant-ID", tenant.id.to_string())).await;
    assert_eq!(own.expect(200)["code"], "assisted");
    app.get("/v1/tenant", ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
    let missing = uuid::Uuid::now_v7();
    app.send(app.request(Method::GET, "/v1/tenant", Some(ADMIN_TOKEN)).header("X-Tenant-ID", missing.to_string()))
        .await
        .expect_error(404, "NOT_FOUND");
    // By code as well as by id (an unknown code is an unknown tenant; a value that can be
    // neither is invalid).
    let by_code = app.send(app.request(Method::GET, "/v1/tenant", Some(ADMIN_TOKEN)).header("X-Tenant-ID", "assisted")).await;
    assert_eq!(by_code.expect(200)["id"], tenant.id.to_string());
    app.send(app.request(Method::GET, "/v1/tenant", Some(ADMIN_TOKEN)).header("X-Tenant-ID", "nope")).await.expect_error(404, "NOT_FOUND");
    app.send(app.request(Method::GET, "/v1/tenant", Some(ADMIN_TOKEN)).header("X-Tenant-ID", "Not A Code!"))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    // A tenant key may name its own tenant by code, not another one.
    let other = app.create_tenant("other-assisted").await;
    app.send(app.request(Method::GET, "/v1/tenant", Some(&tenant.key)).header("X-Tenant-ID", "assisted")).await.expect(200);
    app.send(app.request(Method::GET, "/v1/tenant", Some(&tenant.key)).header("X-Tenant-ID", other.code.as_str()))
        .await
        .expect_error(403, "FORBIDDEN");
}

#[tokio::test]
async fn the_admin_names_tenants_by_code_on_every_tenant_route() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("by-code").await;
    assert_eq!(app.get("/v1/tenants/by-code", ADMIN_TOKEN).await.expect(200)["id"], tenant.id.to_string());
    let listed = app.get("/v1/tenants?code=by-code", ADMIN_TOKEN).await.expect(200).clone();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, [tenant.id.to_string().as_str()]);
    app.get("/v1/tenants/no-such-code", ADMIN_TOKEN).await.expect_error(404, "NOT_FOUND");
    app.post("/v1/tenants/by-code/suspend", ADMIN_TOKEN, serde_json::json!({"reason": "by code"})).await.expect(200);
    assert_eq!(app.get(&format!("/v1/tenants/{}", tenant.id), ADMIN_TOKEN).await.expect(200)["status"], "suspended");
    app.post("/v1/tenants/by-code/reactivate", ADMIN_TOKEN, serde_json::json!({})).await.expect(200);
    app.post("/v1/tenants/by-code/cancel", ADMIN_TOKEN, serde_json::json!({"reason": "by code"})).await.expect(200);
    assert_eq!(app.get("/v1/tenants/by-code", ADMIN_TOKEN).await.expect(200)["status"], "cancelled");
}

#[tokio::test]
async fn a_revoked_key_stops_working_as_soon_as_delete_answers() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("revoking").await;
    let member = app.issue_key(&tenant.key, "member").await;
    app.get("/v1/tenant", &member).await.expect(200);
    let keys = app.get("/v1/api-keys", &tenant.key).await;
    let keys = keys.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.get("api_key").is_none() && k.get("key_hash").is_none()), "secrets or hashes listed: {keys:?}");
    let member_id = keys.iter().find(|k| k["role"] == "member").unwrap()["id"].as_str().unwrap().to_owned();
    let revoked = app.delete(&format!("/v1/api-keys/{member_id}"), &tenant.key).await;
    assert!(revoked.expect(200)["revoked_at"].as_str().is_some());
    app.get("/v1/tenant", &member).await.expect_error(401, "UNAUTHENTICATED");
    app.delete(&format!("/v1/api-keys/{member_id}"), &tenant.key).await.expect_error(404, "NOT_FOUND");
}

/// Authorization before validation: every write operation of the served spec, called with a
/// `readonly` key and a body that is empty, not JSON, or of the wrong shape (and with ids that
/// name nothing), is 403 — the key may not make the request, whatever it carries — and
/// nothing is appended. The same holds for a `member` key on every write of the tenant routes
/// that need an owner or admin key, checked on two of them.
#[tokio::test]
async fn a_readonly_key_is_refused_every_write_whatever_the_body() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("readonly-writes").await;
    let readonly = app.issue_key(&tenant.key, "readonly").await;
    let member = app.issue_key(&tenant.key, "member").await;
    let spec: serde_json::Value = app.request(Method::GET, "/openapi.json", None).send().await.unwrap().json().await.unwrap();
    let before = app.all_events().await.len();
    let bodies: [(&str, Option<&str>); 4] =
        [("none", None), ("empty object", Some("{}")), ("not JSON", Some("{\"unterminated")), ("wrong shape", Some("[1, 2, 3]"))];
    let mut checked = 0;
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            if !["post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            // Public operations (`security: [{}]`, the signed payment webhook) take no bearer token.
            let public = operation["security"].as_array().is_some_and(|s| s.iter().all(|r| r.as_object().is_some_and(|o| o.is_empty())));
            if public {
                continue;
            }
            let concrete = path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{delivery_id}", &uuid::Uuid::now_v7().to_string())
                .replace("{name}", "not-a-projection")
                .replace("{code}", "NO-SUCH-COUPON");
            for (what, body) in bodies {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut request = app.request(method.clone(), &concrete, Some(&readonly));
                if let Some(body) = body {
                    request = request.header("content-type", "application/json").body(body.to_owned());
                }
                let reply = app.send(request).await;
                assert_eq!(reply.status, 403, "{method} {path} with a readonly key and {what} body: {}", reply.body);
                assert_eq!(reply.code(), "FORBIDDEN", "{method} {path} ({what}): {}", reply.body);
                checked += 1;
            }
        }
    }
    assert!(checked >= 4 * 35, "only {checked} write calls were checked: the spec lists fewer write operations than it should");
    for path in ["/v1/api-keys", "/v1/members"] {
        let reply = app.send(app.request(Method::POST, path, Some(&member)).header("content-type", "application/json").body("{}")).await;
        assert_eq!(reply.status, 403, "POST {path} with a member key and an invalid body: {}", reply.body);
    }
    assert_eq!(app.all_events().await.len(), before, "a refused request appended events");
}
