//! Outbound webhooks through real servers: a local receiver, deliveries verified with an
//! independent implementation of the Standard Webhooks specification (`standardwebhooks`),
//! retries on the test clock, auto-disable, SSRF refusals, scopes and secrets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use e2e::{spawn_app_with, TestApp, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

/// A receiver on 127.0.0.1 that records every request and fails the first `fail_first`
/// (or every one, with `usize::MAX`).
#[derive(Clone)]
struct Receiver {
    address: String,
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
}

#[derive(Clone)]
struct ReceiverState {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    fail_first: Arc<AtomicUsize>,
    hang_first: Arc<AtomicUsize>,
}

async fn receive(State(state): State<ReceiverState>, headers: HeaderMap, body: String) -> StatusCode {
    state.got.lock().unwrap().push((headers, body));
    if state.hang_first.load(Ordering::SeqCst) > 0 {
        state.hang_first.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let failing = state.fail_first.load(Ordering::SeqCst);
    if failing > 0 {
        if failing != usize::MAX {
            state.fail_first.fetch_sub(1, Ordering::SeqCst);
        }
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start(fail_first: usize) -> Self {
        Self::start_hanging(fail_first, 0).await
    }

    /// A receiver whose first `hang_first` requests get no answer for a minute.
    async fn start_hanging(fail_first: usize, hang_first: usize) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let state = ReceiverState {
            got: got.clone(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            hang_first: Arc::new(AtomicUsize::new(hang_first)),
        };
        let app = axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { address, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.address)
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until at least `n` requests came.
    async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, String)> {
        for _ in 0..300 {
            if self.count() >= n {
                return self.got.lock().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver got {} requests, not {n}", self.count());
    }
}

async fn app_allowing(receiver: &Receiver, test_clock: bool) -> TestApp {
    let allow = receiver.address.clone();
    spawn_app_with(move |c| {
        c.webhook_allow_hosts = projections::webhooks::AllowList::parse(&allow);
        c.test_clock = test_clock;
    })
    .await
}

async fn patch(app: &TestApp, path: &str, token: &str, body: Value) -> e2e::Reply {
    app.send(app.request(Method::PATCH, path, Some(token)).json(&body)).await
}

/// Waits until `check` holds for the endpoint's deliveries.
async fn deliveries_until(app: &TestApp, endpoint: &str, token: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Vec::new();
    for _ in 0..300 {
        let reply = app.get(&format!("/v1/webhook-endpoints/{endpoint}/deliveries"), token).await;
        last = reply.expect(200)["data"].as_array().unwrap().clone();
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the deliveries never got there: {last:#?}");
}

#[tokio::test]
async fn a_tenant_endpoint_gets_its_own_events_signed_as_standard_webhooks_and_never_shows_its_secret_again() {
    let receiver = Receiver::start(0).await;
    let app = app_allowing(&receiver, false).await;
    let tenant = app.create_tenant("hooked-clinic").await;
    let other = app.create_tenant("other-clinic").await;

    let created = app
        .post(
            "/v1/webhook-endpoints",
            &tenant.key,
            json!({"url": receiver.url(), "event_types": ["booking.confirmed"], "description": "front desk"}),
        )
        .await;
    let endpoint = created.expect(201).clone();
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{endpoint}");
    assert_eq!((endpoint["status"].as_str(), endpoint["tenant_id"].as_str()), (Some("enabled"), Some(tenant.id.to_string().as_str())));
    let id = endpoint["id"].as_str().unwrap().to_owned();

    // Another tenant's booking is not this endpoint's business; this tenant's is.
    let room = app.create_resource(&other.key, "room", 4).await;
    app.book(&other.key, &room, "2031-03-01T10:00:00Z", "2031-03-01T11:00:00Z", 1).await.expect(201);
    let room = app.create_resource(&tenant.key, "room", 4).await;
    let booking = app.book(&tenant.key, &room, "2031-03-01T10:00:00Z", "2031-03-01T11:00:00Z", 1).await.expect(201).clone();

    let got = receiver.wait_for(1).await;
    let (headers, body) = &got[0];
    // Verified by an independent implementation of the specification.
    standardwebhooks::Webhook::new(&secret).unwrap().verify(body.as_bytes(), headers).expect("a valid Standard Webhooks signature");
    standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap()
        .verify(body.as_bytes(), headers)
        .expect_err("another secret");
    let delivered: Value = serde_json::from_str(body).unwrap();
    assert_eq!(delivered["type"], "booking.confirmed");
    assert_eq!(delivered["tenant_id"], json!(tenant.id));
    assert_eq!(delivered["data"]["aggregate_id"], booking["id"]);
    // The customer's personal data reaches the receiver in the clear; the database keeps it sealed.
    assert_eq!(delivered["data"]["customer"]["email"], "ada@example.com", "{delivered}");
    let stored: String = sqlx::query_scalar("SELECT body FROM webhook_deliveries").fetch_one(&app.pool).await.unwrap();
    assert!(!stored.contains("ada@example.com") && stored.contains("pii1:"), "{stored}");
    assert_eq!(headers["webhook-id"].to_str().unwrap(), delivered["id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count(), 1, "only this tenant's booking, once");

    let log = deliveries_until(&app, &id, &tenant.key, |d| d.first().is_some_and(|d| d["status"] == "succeeded")).await;
    assert_eq!((log.len(), log[0]["attempts"].as_i64(), log[0]["last_response_status"].as_i64()), (1, Some(1), Some(204)));

    // The secret is never shown again, nor stored in the clear.
    let shown = app.get(&format!("/v1/webhook-endpoints/{id}"), &tenant.key).await.expect(200).clone();
    assert!(shown.get("secret").is_none(), "{shown}");
    let listed = app.get("/v1/webhook-endpoints", &tenant.key).await.expect(200).clone();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret));
    let stored: String = sqlx::query_scalar("SELECT secret_sealed::text FROM webhook_endpoints").fetch_one(&app.pool).await.unwrap();
    assert!(!stored.contains(&secret) && !stored.contains(&secret["whsec_".len()..]), "{stored}");

    // Another tenant (and its keys) cannot see or change it, even by id.
    app.get(&format!("/v1/webhook-endpoints/{id}"), &other.key).await.expect_error(404, "NOT_FOUND");
    patch(&app, &format!("/v1/webhook-endpoints/{id}"), &other.key, json!({"status": "disabled"})).await.expect_error(404, "NOT_FOUND");
    assert_eq!(app.get("/v1/webhook-endpoints", &other.key).await.expect(200)["data"], json!([]));
    // A member key may not manage endpoints.
    let member = app.issue_key(&tenant.key, "member").await;
    app.get("/v1/webhook-endpoints", &member).await.expect_error(403, "FORBIDDEN");

    // Deleted: gone, with its log.
    let deleted = app.delete(&format!("/v1/webhook-endpoints/{id}"), &tenant.key).await;
    assert_eq!(deleted.expect(200)["deleted"], true);
    app.get(&format!("/v1/webhook-endpoints/{id}"), &tenant.key).await.expect_error(404, "NOT_FOUND");
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt_when_the_test_clock_passes_the_schedule() {
    let receiver = Receiver::start(2).await;
    let app = app_allowing(&receiver, true).await;
    app.set_clock("2031-01-01T00:00:00Z").await;
    // The platform's endpoint: every tenant's events.
    let endpoint = app
        .post("/v1/webhook-endpoints", ADMIN_TOKEN, json!({"url": receiver.url(), "event_types": ["tenant.created"]}))
        .await
        .expect(201)
        .clone();
    assert_eq!(endpoint["tenant_id"], Value::Null);
    let id = endpoint["id"].as_str().unwrap().to_owned();
    let tenant = app.create_tenant("retried-school").await;

    receiver.wait_for(1).await;
    let log = deliveries_until(&app, &id, ADMIN_TOKEN, |d| d.first().is_some_and(|d| d["attempts"] == 1)).await;
    assert_eq!((log[0]["status"].as_str(), log[0]["last_response_status"].as_i64()), (Some("pending"), Some(500)));
    assert_eq!(log[0]["next_attempt_at"], "2031-01-01T00:00:05Z");
    // Nothing is sent again before the schedule says so on the server's clock.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 1);

    app.set_clock("2031-01-01T00:00:06Z").await;
    receiver.wait_for(2).await;
    let log = deliveries_until(&app, &id, ADMIN_TOKEN, |d| d[0]["attempts"] == 2).await;
    assert_eq!(log[0]["next_attempt_at"], "2031-01-01T00:05:06Z", "5 minutes after the second attempt");
    app.set_clock("2031-01-01T00:05:07Z").await;
    let got = receiver.wait_for(3).await;
    let log = deliveries_until(&app, &id, ADMIN_TOKEN, |d| d[0]["status"] == "succeeded").await;
    assert_eq!(log[0]["attempts"], 3);
    let ids: Vec<&str> = got.iter().map(|(h, _)| h["webhook-id"].to_str().unwrap()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "the same webhook-id on every attempt: {ids:?}");
    let body: Value = serde_json::from_str(&got[2].1).unwrap();
    assert_eq!((body["type"].as_str(), body["tenant_id"].clone()), (Some("tenant.created"), json!(tenant.id)));

    // A manual retry sends it again now.
    let delivery = log[0]["id"].as_str().unwrap();
    let retried = app.post(&format!("/v1/webhook-endpoints/{id}/deliveries/{delivery}/retry"), ADMIN_TOKEN, json!({})).await;
    assert_eq!((retried.expect(200)["attempts"].as_i64(), retried.expect(200)["status"].as_str()), (Some(4), Some("succeeded")));
    assert_eq!(receiver.count(), 4);
    let filtered = app.get(&format!("/v1/webhook-endpoints/{id}/deliveries?status=failed"), ADMIN_TOKEN).await;
    assert_eq!(filtered.expect(200)["data"], json!([]));
    app.get(&format!("/v1/webhook-endpoints/{id}/deliveries?status=lost"), ADMIN_TOKEN).await.expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test]
async fn an_endpoint_whose_receiver_is_down_for_three_days_of_test_clock_is_disabled() {
    let receiver = Receiver::start(usize::MAX).await;
    let app = app_allowing(&receiver, true).await;
    app.set_clock("2031-01-01T00:00:00Z").await;
    let endpoint =
        app.post("/v1/webhook-endpoints", ADMIN_TOKEN, json!({"url": receiver.url(), "event_types": ["*"]})).await.expect(201).clone();
    let id = endpoint["id"].as_str().unwrap().to_owned();
    app.create_tenant("down-firm").await;
    receiver.wait_for(1).await;

    app.set_clock("2031-01-02T00:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let shown = app.get(&format!("/v1/webhook-endpoints/{id}"), ADMIN_TOKEN).await.expect(200).clone();
    assert_eq!((shown["status"].as_str(), shown["failing_since"].as_str()), (Some("enabled"), Some("2031-01-01T00:00:00Z")));

    app.set_clock("2031-01-04T00:01:00Z").await;
    let mut status = Value::Null;
    for _ in 0..200 {
        status = app.get(&format!("/v1/webhook-endpoints/{id}"), ADMIN_TOKEN).await.expect(200)["status"].clone();
        if status == "disabled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "disabled");
    // Disabled: nothing new is delivered.
    let before = receiver.count();
    app.create_tenant("later-firm").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), before);
    // Enabled again by hand: a new streak.
    let enabled = patch(&app, &format!("/v1/webhook-endpoints/{id}"), ADMIN_TOKEN, json!({"status": "enabled"})).await;
    assert_eq!((enabled.expect(200)["status"].as_str(), enabled.expect(200)["failing_since"].clone()), (Some("enabled"), Value::Null));
}

#[tokio::test]
async fn endpoints_on_private_addresses_or_plain_http_are_refused_unless_allow_listed() {
    let receiver = Receiver::start(0).await;
    let app = e2e::spawn_app().await;
    let tenant = app.create_tenant("careful-clinic").await;
    for url in [
        receiver.url(),
        format!("https://{}/hooks", receiver.address),
        "https://localhost/hooks".to_owned(),
        "https://10.1.2.3/hooks".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://[::1]/hooks".to_owned(),
        "http://example.com/hooks".to_owned(),
        "ftp://example.com/hooks".to_owned(),
        "not a url".to_owned(),
    ] {
        let reply = app.post("/v1/webhook-endpoints", &tenant.key, json!({"url": url, "event_types": ["*"]})).await;
        reply.expect_error(400, "VALIDATION_FAILED");
        assert_eq!(reply.body["error"]["details"]["field"], "url", "{url}: {:?}", reply.body);
    }
    let bad_type =
        app.post("/v1/webhook-endpoints", &tenant.key, json!({"url": "https://example.com/h", "event_types": ["invoice.eaten"]})).await;
    bad_type.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad_type.body["error"]["details"]["field"], "event_types");
    app.post("/v1/webhook-endpoints", &tenant.key, json!({"url": "https://example.com/h", "event_types": []}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/webhook-endpoints", &tenant.key, json!({"url": "https://example.com/h", "event_types": ["*"], "secret": "mine"}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    assert_eq!(app.get("/v1/webhook-endpoints", &tenant.key).await.expect(200)["data"], json!([]));

    // Allow-listed, the same receiver is accepted.
    let allowing = app_allowing(&receiver, false).await;
    let tenant = allowing.create_tenant("careful-clinic").await;
    allowing.post("/v1/webhook-endpoints", &tenant.key, json!({"url": receiver.url(), "event_types": ["*"]})).await.expect(201);
}

#[tokio::test]
async fn a_server_stopped_mid_delivery_loses_nothing_and_the_next_leader_redelivers_with_the_same_webhook_id() {
    let receiver = Receiver::start_hanging(0, 1).await;
    let mut first = app_allowing(&receiver, false).await;
    let endpoint = first
        .post("/v1/webhook-endpoints", ADMIN_TOKEN, json!({"url": receiver.url(), "event_types": ["tenant.created"]}))
        .await
        .expect(201)
        .clone();
    let id = endpoint["id"].as_str().unwrap().to_owned();
    first.create_tenant("first-tenant").await;
    first.create_tenant("second-tenant").await;
    // The first attempt is in flight (the receiver holds it) when the instance goes away.
    receiver.wait_for(1).await;
    first.stop().await;

    let allow = receiver.address.clone();
    let second = e2e::spawn_instance_with(&first, move |c| c.webhook_allow_hosts = projections::webhooks::AllowList::parse(&allow)).await;
    let got = receiver.wait_for(3).await;
    let ids: Vec<String> = got.iter().map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(ids[0], ids[1], "the interrupted delivery is sent again with its webhook-id: {ids:?}");
    assert_eq!(got[0].1, got[1].1, "and the same body");
    assert_ne!(ids[1], ids[2], "then the next event, in log order: {ids:?}");
    let types: Vec<String> = got
        .iter()
        .map(|(_, b)| serde_json::from_str::<Value>(b).unwrap()["data"]["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types[1..], ["first-tenant".to_owned(), "second-tenant".to_owned()], "{types:?}");
    let log = deliveries_until(&second, &id, ADMIN_TOKEN, |d| d.len() == 2 && d.iter().all(|d| d["status"] == "succeeded")).await;
    assert!(log.iter().all(|d| d["attempts"] == 1), "the interrupted attempt was never recorded: {log:#?}");
}

#[tokio::test]
async fn trial_will_end_is_sent_once_three_days_before_the_trial_ends_on_the_servers_clock() {
    let receiver = Receiver::start(0).await;
    let app = app_allowing(&receiver, true).await;
    app.set_clock("2031-05-01T00:00:00Z").await;
    let endpoint = app
        .post("/v1/webhook-endpoints", ADMIN_TOKEN, json!({"url": receiver.url(), "event_types": ["subscription.trial_will_end"]}))
        .await
        .expect(201)
        .clone();
    let id = endpoint["id"].as_str().unwrap().to_owned();
    // A 14-day trial: it ends on 2031-05-15.
    let tenant = app.create_tenant("trial-school").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 0, "11 days to go: nothing yet");

    app.set_clock("2031-05-12T00:00:01Z").await;
    let got = receiver.wait_for(1).await;
    let body: Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!((body["type"].as_str(), body["tenant_id"].clone()), (Some("subscription.trial_will_end"), json!(tenant.id)));
    assert_eq!(body["data"]["trial_ends_at"], "2031-05-15T00:00:00+00:00");
    assert_eq!(body["created_at"], "2031-05-12T00:00:01.000Z");
    standardwebhooks::Webhook::new(endpoint["secret"].as_str().unwrap()).unwrap().verify(got[0].1.as_bytes(), &got[0].0).expect("signed");

    app.set_clock("2031-05-13T00:00:00Z").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.count(), 1, "once per trial");
    let log = deliveries_until(&app, &id, ADMIN_TOKEN, |d| d.len() == 1 && d[0]["status"] == "succeeded").await;
    assert_eq!(log[0]["event_type"], "subscription.trial_will_end");
}

#[tokio::test]
async fn quota_threshold_events_fire_once_per_metric_threshold_and_period_under_concurrent_usage() {
    let receiver = Receiver::start(0).await;
    let app = app_allowing(&receiver, false).await;
    let plan = json!({"code": "metered-ten", "name": "Ten calls", "monthly_price": "5.00", "limits": {"api_calls_per_month": 10}, "features": [], "rate_limit_per_minute": 1000});
    app.post("/v1/plans", ADMIN_TOKEN, plan).await.expect(201);
    let tenant = app.create_tenant_on("busy-api", "metered-ten").await;
    let quiet = app.create_tenant_on("quiet-api", "metered-ten").await;
    let endpoint = app
        .post("/v1/webhook-endpoints", &tenant.key, json!({"url": receiver.url(), "event_types": ["quota.threshold_reached"]}))
        .await
        .expect(201)
        .clone();

    // 7 calls: below 80 %.
    let record = |key: String, n: usize| {
        let app = &app;
        async move {
            let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("call-{n}")});
            app.post("/v1/usage", &key, body).await.expect(202);
        }
    };
    futures::future::join_all((0..7).map(|n| record(tenant.key.clone(), n))).await;
    futures::future::join_all((0..9).map(|n| record(quiet.key.clone(), n))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.count(), 0, "70 % of the busy tenant's limit; the quiet one has no endpoint");

    // 16 more at once: 80 % and 100 % are crossed by the same burst, each reported once.
    futures::future::join_all((7..23).map(|n| record(tenant.key.clone(), n))).await;
    let got = receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.count(), 2, "once per threshold");
    let bodies: Vec<Value> = got.iter().map(|(_, b)| serde_json::from_str(b).unwrap()).collect();
    let thresholds: Vec<i64> = bodies.iter().map(|b| b["data"]["threshold"].as_i64().unwrap()).collect();
    assert_eq!(thresholds, [80, 100], "in order: {bodies:#?}");
    for body in &bodies {
        assert_eq!((body["type"].as_str(), body["tenant_id"].clone()), (Some("quota.threshold_reached"), json!(tenant.id)));
        assert_eq!((body["data"]["metric"].as_str(), body["data"]["limit"].as_i64()), (Some("api_calls_per_month"), Some(10)));
        assert!(body["data"]["used"].as_i64().unwrap() >= 8, "{body}");
    }
    let secret = endpoint["secret"].as_str().unwrap();
    standardwebhooks::Webhook::new(secret).unwrap().verify(got[1].1.as_bytes(), &got[1].0).expect("signed");

    // More usage in the same period reports nothing new.
    futures::future::join_all((23..30).map(|n| record(tenant.key.clone(), n))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.count(), 2);
}
