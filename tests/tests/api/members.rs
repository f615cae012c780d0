//! Members (seats) end to end: the lifecycle, personal data sealed/exported/erased, e-mail
//! uniqueness, the seat limit exact under concurrency, and auto-added seats billed prorated.

use e2e::{spawn_app_with, TestApp, TestTenant, ADMIN_TOKEN};
use serde_json::{json, Value};

async fn app() -> TestApp {
    spawn_app_with(|c| c.test_clock = true).await
}

async fn tenant(app: &TestApp, code: &str) -> TestTenant {
    app.create_billed_tenant(code, "starter").await
}

async fn invite(app: &TestApp, token: &str, email: &str) -> e2e::Reply {
    app.post("/v1/members", token, json!({"email": email, "name": "Dr. Who", "role": "member"})).await
}

#[tokio::test]
async fn members_are_invited_accepted_changed_and_removed_with_their_personal_data_sealed() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "team").await;
    let other = self::tenant(&app, "other-team").await;

    let invited = invite(&app, &tenant.key, "anna@example.com").await.expect(201).clone();
    assert_eq!(
        (invited["status"].as_str(), invited["email"].as_str(), invited["role"].as_str()),
        (Some("invited"), Some("anna@example.com"), Some("member"))
    );
    let id = invited["id"].as_str().unwrap().to_owned();
    // Unique among members not removed, whatever the case of the address.
    let duplicate = invite(&app, &tenant.key, "ANNA@example.com").await;
    duplicate.expect_error(409, "CONFLICT");
    assert_eq!(duplicate.body["error"]["details"]["field"], "email");
    // Another tenant may invite the same address, and cannot see this tenant's member.
    invite(&app, &other.key, "anna@example.com").await.expect(201);
    app.get(&format!("/v1/members/{id}"), &other.key).await.expect_error(404, "NOT_FOUND");
    app.post(&format!("/v1/members/{id}/accept"), &other.key, json!({})).await.expect_error(404, "NOT_FOUND");
    // Only owners and admins invite; bad input is 400.
    let readonly = app.issue_key(&tenant.key, "member").await;
    invite(&app, &readonly, "bob@example.com").await.expect_error(403, "FORBIDDEN");
    for (body, field) in [
        (json!({"email": "not-an-email", "role": "member"}), "email"),
        (json!({"email": "c@example.com", "role": "boss"}), "role"),
        (json!({"email": "c@example.com", "role": "member", "name": ""}), "name"),
    ] {
        let reply = app.post("/v1/members", &tenant.key, body.clone()).await;
        reply.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(reply.body["error"]["details"]["field"], field, "{body}");
    }

    let accepted = app.post(&format!("/v1/members/{id}/accept"), &tenant.key, json!({})).await.expect(200).clone();
    assert_eq!(accepted["status"], "active");
    app.post(&format!("/v1/members/{id}/accept"), &tenant.key, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    let promoted = app
        .send(app.request(reqwest::Method::PATCH, &format!("/v1/members/{id}"), Some(&tenant.key)).json(&json!({"role": "admin"})))
        .await;
    assert_eq!(promoted.expect(200)["role"], "admin");
    let listed = app.get("/v1/members?status=active", &tenant.key).await.expect(200).clone();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // The log holds the e-mail sealed, never in clear.
    let invited_event = app.all_events().await.into_iter().find(|e| e["event_type"] == "MemberInvited").unwrap();
    assert!(!invited_event.to_string().contains("anna@example.com"), "{invited_event}");

    // Removed: the seat and the address are free again.
    let removed = app.delete(&format!("/v1/members/{id}"), &tenant.key).await.expect(200).clone();
    assert_eq!(removed["status"], "removed");
    app.delete(&format!("/v1/members/{id}"), &tenant.key).await.expect_error(409, "INVALID_STATE_TRANSITION");
    invite(&app, &tenant.key, "anna@example.com").await.expect(201);

    // Exported in clear to the tenant; unreadable once the tenant is erased.
    let export = app.get("/v1/tenant/export", &tenant.key).await.expect(200).clone();
    let emails: Vec<&str> = export["members"].as_array().unwrap().iter().filter_map(|m| m["email"].as_str()).collect();
    assert_eq!(emails, ["anna@example.com", "anna@example.com"]);
    app.post(&format!("/v1/tenants/{}/erase", tenant.id), ADMIN_TOKEN, json!({})).await.expect(200);
    let after: Value = app
        .send(app.request(reqwest::Method::GET, "/v1/members", Some(ADMIN_TOKEN)).header("X-Tenant-ID", tenant.id.to_string()))
        .await
        .expect(200)
        .clone();
    assert!(after["data"].as_array().unwrap().iter().all(|m| m["email"].is_null() && m["name"].is_null()), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_invitations_on_a_three_seat_plan_take_exactly_three() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "crowded").await;
    let emails: Vec<String> = (0..20).map(|i| format!("person{i}@example.com")).collect();
    let replies = futures::future::join_all(emails.iter().map(|email| invite(&app, &tenant.key, email))).await;
    let created = replies.iter().filter(|r| r.status.as_u16() == 201).count();
    for reply in replies.iter().filter(|r| r.status.as_u16() != 201) {
        reply.expect_error(429, "QUOTA_EXCEEDED");
        assert_eq!(
            (reply.body["error"]["details"]["metric"].as_str(), reply.body["error"]["details"]["limit"].as_i64()),
            (Some("users"), Some(3))
        );
    }
    assert_eq!(created, 3);
    let quota = app.get("/v1/quota/users", &tenant.key).await.expect(200).clone();
    assert_eq!((quota["used"].as_i64(), quota["limit"].as_i64()), (Some(3), Some(3)));
    // Removing one frees its seat at once.
    let members = app.get("/v1/members", &tenant.key).await.expect(200).clone();
    let first = members["data"][0]["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/v1/members/{first}"), &tenant.key).await.expect(200);
    invite(&app, &tenant.key, "late@example.com").await.expect(201);
    invite(&app, &tenant.key, "later@example.com").await.expect_error(429, "QUOTA_EXCEEDED");
}

#[tokio::test]
async fn auto_added_seats_grow_extra_users_and_bill_the_rest_of_the_period_on_the_next_invoice() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "growing").await;
    for i in 0..3 {
        invite(&app, &tenant.key, &format!("p{i}@example.com")).await.expect(201);
    }
    let sub = app.put("/v1/subscription/addons", &tenant.key, json!({"extra_users": 0, "auto_add_seats": true})).await.expect(200).clone();
    assert_eq!(sub["addons"]["auto_add_seats"], true);
    // Jan 16 of a 31-day period: 16/31 of 5.00 = 2.58.
    app.set_clock("2027-01-16T00:00:00Z").await;
    invite(&app, &tenant.key, "p3@example.com").await.expect(201);
    let sub = app.get("/v1/subscription", &tenant.key).await.expect(200).clone();
    assert_eq!(sub["addons"]["extra_users"], 1);
    let quota = app.get("/v1/quota/users", &tenant.key).await.expect(200).clone();
    assert_eq!((quota["used"].as_i64(), quota["limit"].as_i64()), (Some(4), Some(4)));
    app.set_clock("2027-02-01T00:00:00Z").await;
    let invoices = app.get("/v1/invoices", &tenant.key).await.expect(200).clone();
    let february = invoices["data"][0].clone();
    let lines: Vec<(String, String)> = february["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["kind"].as_str().unwrap().to_owned(), l["amount"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> =
        [("plan", "29.00"), ("addon", "5.00"), ("addon", "2.58")].iter().map(|(k, a)| ((*k).to_owned(), (*a).to_owned())).collect();
    assert_eq!(lines, expected);
    assert_eq!([&february["subtotal"], &february["tax"], &february["total"]], [&json!("36.58"), &json!("3.66"), &json!("40.24")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invitations_with_auto_added_seats_each_add_exactly_one() {
    let app = app().await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = tenant(&app, "booming").await;
    app.put("/v1/subscription/addons", &tenant.key, json!({"auto_add_seats": true})).await.expect(200);
    let emails: Vec<String> = (0..10).map(|i| format!("hire{i}@example.com")).collect();
    let replies = futures::future::join_all(emails.iter().map(|email| invite(&app, &tenant.key, email))).await;
    assert!(replies.iter().all(|r| r.status.as_u16() == 201), "{:?}", replies.iter().map(|r| &r.body).collect::<Vec<_>>());
    // 3 seats of the plan, 7 added: never more seats than members, never more members than seats.
    let quota = app.get("/v1/quota/users", &tenant.key).await.expect(200).clone();
    assert_eq!((quota["used"].as_i64(), quota["limit"].as_i64()), (Some(10), Some(10)));
    assert_eq!(app.get("/v1/subscription", &tenant.key).await.expect(200)["addons"]["extra_users"], 7);
}
