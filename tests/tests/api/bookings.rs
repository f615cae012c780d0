//! Bookings and quotas under real concurrency: one server, many simultaneous requests.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use e2e::spawn_app;
use futures::future::join_all;
use serde_json::json;

fn slot(i: i64) -> (String, String) {
    let start = Utc.with_ymd_and_hms(2099, 6, 1, 8, 0, 0).unwrap() + Duration::minutes(30 * i);
    (start.to_rfc3339(), (start + Duration::minutes(30)).to_rfc3339())
}

fn statuses(replies: &[e2e::Reply]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        let code = if r.status.is_success() { String::new() } else { r.code().to_owned() };
        *counts.entry((r.status.as_u16(), code)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_for_one_room_slot_confirm_exactly_one() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("room-race", "enterprise").await;
    let room = app.create_resource(&tenant.key, "room", 4).await;
    let (start, end) = slot(0);
    let replies = join_all((0..50).map(|_| app.book(&tenant.key, &room, &start, &end, 1))).await;
    assert_eq!(statuses(&replies), BTreeMap::from([((201, String::new()), 1), ((409, "BOOKING_OVERLAP".into()), 49)]));
    let confirmed = app.get(&format!("/v1/bookings?resource_id={room}&status=confirmed"), &tenant.key).await;
    assert_eq!(confirmed.expect(200)["data"].as_array().unwrap().len(), 1);

    // Overlapping partly is an overlap; touching end to start is not.
    let later = Utc.with_ymd_and_hms(2099, 6, 1, 8, 15, 0).unwrap().to_rfc3339();
    let latest = Utc.with_ymd_and_hms(2099, 6, 1, 8, 45, 0).unwrap().to_rfc3339();
    app.book(&tenant.key, &room, &later, &latest, 1).await.expect_error(409, "BOOKING_OVERLAP");
    let (next_start, next_end) = slot(1);
    app.book(&tenant.key, &room, &next_start, &next_end, 1).await.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_seats_never_exceed_the_capacity_or_the_plans_tickets_per_event() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("seat-race", "enterprise").await;
    let concert = app.create_resource(&tenant.key, "event", 10).await;
    let (start, end) = slot(0);
    let replies = join_all((0..50).map(|_| app.book(&tenant.key, &concert, &start, &end, 1))).await;
    assert_eq!(statuses(&replies), BTreeMap::from([((201, String::new()), 10), ((409, "CAPACITY_EXCEEDED".into()), 40)]));
    let refused = replies.iter().find(|r| r.status == 409).unwrap();
    assert_eq!(refused.body["error"]["details"]["capacity"], 10);

    // Starter allows 50 tickets per event, whatever the event's own capacity.
    let starter = app.create_tenant_on("small-venue", "starter").await;
    let gala = app.create_resource(&starter.key, "event", 200).await;
    let replies = join_all((0..60).map(|_| app.book(&starter.key, &gala, &start, &end, 1))).await;
    assert_eq!(statuses(&replies), BTreeMap::from([((201, String::new()), 50), ((409, "CAPACITY_EXCEEDED".into()), 10)]));
    app.book(&starter.key, &gala, &start, &end, 51).await.expect_error(409, "CAPACITY_EXCEEDED");

    // Cancelling gives the seats back.
    let bookings = app.get(&format!("/v1/bookings?resource_id={gala}&limit=1"), &starter.key).await;
    let id = bookings.expect(200)["data"][0]["id"].as_str().unwrap().to_owned();
    let cancelled = app.post(&format!("/v1/bookings/{id}/cancel"), &starter.key, json!({"reason": "cannot come"})).await;
    assert_eq!(cancelled.expect(200)["status"], "cancelled");
    app.book(&starter.key, &gala, &start, &end, 1).await.expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_booking_plan_confirms_exactly_a_hundred_of_120_concurrent_bookings() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("busy-clinic", "starter").await;
    let room = app.create_resource(&tenant.key, "room", 2).await;
    let slots: Vec<(String, String)> = (0..120).map(slot).collect();
    let replies = join_all(slots.iter().map(|(s, e)| app.book(&tenant.key, &room, s, e, 1))).await;
    assert_eq!(statuses(&replies), BTreeMap::from([((201, String::new()), 100), ((429, "QUOTA_EXCEEDED".into()), 20)]));
    let refused = replies.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.body["error"]["details"], json!({"metric": "bookings_per_month", "limit": 100, "used": 100}));

    let quota = app.get("/v1/quota/bookings_per_month", &tenant.key).await;
    let quota = quota.expect(200);
    assert_eq!((quota["limit"].as_u64(), quota["used"].as_u64(), quota["remaining"].as_u64()), (Some(100), Some(100), Some(0)));
    let all = app.get("/v1/quota", &tenant.key).await;
    assert!(all.expect(200).as_array().unwrap().iter().any(|q| q["metric"] == "api_calls_per_month"));
    app.get("/v1/quota/nonsense", &tenant.key).await.expect_error(404, "NOT_FOUND");

    // The 100 confirmed bookings page through by start time with the cursor, passed back raw.
    let (mut seen, mut path) = (Vec::new(), "/v1/bookings?limit=30".to_owned());
    loop {
        let page = app.get(&path, &tenant.key).await.expect(200).clone();
        seen.extend(page["data"].as_array().unwrap().iter().map(|b| b["starts_at"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/bookings?limit=30&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 100);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "pages are in start order without repeats");
    app.get("/v1/bookings?cursor=garbage", &tenant.key).await.expect_error(400, "VALIDATION_FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_resources_are_limited_by_the_plan() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("many-events", "starter").await;
    let body = |i: usize| json!({"name": format!("Event {i}"), "kind": "event", "capacity": 10});
    let replies = join_all((0..7).map(|i| app.post("/v1/resources", &tenant.key, body(i)))).await;
    assert_eq!(statuses(&replies), BTreeMap::from([((201, String::new()), 5), ((429, "QUOTA_EXCEEDED".into()), 2)]));
    app.post("/v1/resources", &tenant.key, json!({"name": "Room", "kind": "room", "capacity": 3})).await.expect(201);
    let quota = app.get("/v1/quota/events", &tenant.key).await;
    assert_eq!(quota.expect(200)["used"], 5);
}

#[tokio::test]
async fn bookings_are_validated_rescheduled_and_isolated_per_tenant() {
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("careful", "professional").await;
    let other = app.create_tenant_on("other", "professional").await;
    let room = app.create_resource(&tenant.key, "room", 3).await;
    let (start, end) = slot(0);

    let backwards = app.book(&tenant.key, &room, &end, &start, 1).await;
    backwards.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(backwards.body["error"]["details"]["field"], "ends_at");
    let bad_time = app
        .post(
            "/v1/bookings",
            &tenant.key,
            json!({"resource_id": room, "starts_at": "tomorrow", "ends_at": end, "customer": {"name": "A", "email": "a@b.example"}}),
        )
        .await;
    bad_time.expect_error(400, "VALIDATION_FAILED");
    assert_eq!(bad_time.body["error"]["details"]["field"], "starts_at");
    app.book(&tenant.key, &room, "2020-01-01T08:00:00Z", "2020-01-01T09:00:00Z", 1).await.expect_error(400, "VALIDATION_FAILED");
    app.book(&tenant.key, &room, &start, "2099-06-03T08:00:00Z", 1).await.expect_error(400, "VALIDATION_FAILED");
    app.book(&tenant.key, &room, &start, &end, 0).await.expect_error(400, "VALIDATION_FAILED");
    app.book(&tenant.key, &room, &start, &end, 4).await.expect_error(409, "CAPACITY_EXCEEDED");
    app.book(&other.key, &room, &start, &end, 1).await.expect_error(404, "NOT_FOUND");
    app.book(&tenant.key, "not-a-uuid", &start, &end, 1).await.expect_error(404, "NOT_FOUND");
    app.post("/v1/resources", &tenant.key, json!({"name": "X", "kind": "garden", "capacity": 1}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.post("/v1/resources", &tenant.key, json!({"name": "X", "kind": "room", "capacity": 0}))
        .await
        .expect_error(400, "VALIDATION_FAILED");
    app.get(&format!("/v1/resources/{room}"), &other.key).await.expect_error(404, "NOT_FOUND");

    let first = app.book(&tenant.key, &room, &start, &end, 2).await.expect(201).clone();
    assert_eq!(first["status"], "confirmed");
    assert_eq!(first["customer"]["email"], "ada@example.com");
    let id = first["id"].as_str().unwrap();
    let (s1, e1) = slot(1);
    let second = app.book(&tenant.key, &room, &s1, &e1, 1).await.expect(201)["id"].as_str().unwrap().to_owned();
    // Moving the second booking onto the first is an overlap; elsewhere is fine.
    app.post(&format!("/v1/bookings/{second}/reschedule"), &tenant.key, json!({"starts_at": start, "ends_at": end}))
        .await
        .expect_error(409, "BOOKING_OVERLAP");
    let (s5, e5) = slot(5);
    let moved = app.post(&format!("/v1/bookings/{second}/reschedule"), &tenant.key, json!({"starts_at": s5, "ends_at": e5})).await;
    assert_eq!(moved.expect(200)["starts_at"], s5.replace("+00:00", "Z"));
    app.post(&format!("/v1/bookings/{id}/cancel"), &other.key, json!({})).await.expect_error(404, "NOT_FOUND");
    app.get(&format!("/v1/bookings/{id}"), &other.key).await.expect_error(404, "NOT_FOUND");
    app.post(&format!("/v1/bookings/{id}/cancel"), &tenant.key, json!({})).await.expect(200);
    app.post(&format!("/v1/bookings/{id}/cancel"), &tenant.key, json!({})).await.expect_error(409, "INVALID_STATE_TRANSITION");
    // The freed slot can be booked again.
    app.book(&tenant.key, &room, &start, &end, 1).await.expect(201);
    let readonly = app.issue_key(&tenant.key, "readonly").await;
    app.book(&readonly, &room, &s1, &e1, 1).await.expect_error(403, "FORBIDDEN");
}

/// `app.book` of `room`'s `i`th slot, for one seat.
async fn book_slot(app: &e2e::TestApp, key: &str, room: &str, i: i64) -> e2e::Reply {
    let (start, end) = slot(i);
    app.book(key, room, &start, &end, 1).await
}

/// Bookings are decided on a context each instance keeps per tenant and resource (the room, the
/// plan's limits, the tenant's key); a plan change answered on one instance applies to the very
/// next booking on the other, whose kept context is then out of date.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kept_booking_context_never_outlives_a_change_of_plan_on_any_instance() {
    let a = spawn_app().await;
    let b = e2e::spawn_instance_of(&a).await;
    let plan = |code: &str, price: &str, bookings: u32| {
        json!({"code": code, "name": code, "monthly_price": price, "features": ["bookings"], "rate_limit_per_minute": 1000,
               "limits": {"users": 3, "bookings_per_month": bookings, "events": 5, "tickets_per_event": 50, "storage_mb": 1024, "api_calls_per_month": 10000}})
    };
    a.post("/v1/plans", e2e::ADMIN_TOKEN, plan("tiny", "10.00", 1)).await.expect(201);
    a.post("/v1/plans", e2e::ADMIN_TOKEN, plan("roomy", "20.00", 4)).await.expect(201);
    let tenant = a.create_tenant_on("kept-context", "tiny").await;
    let room = a.create_resource(&tenant.key, "room", 2).await;
    let refused = |reply: e2e::Reply, limit: u64, used: u64| {
        reply.expect_error(429, "QUOTA_EXCEEDED");
        assert_eq!(reply.body["error"]["details"], json!({"metric": "bookings_per_month", "limit": limit, "used": used}));
    };

    // `b` decides on the tiny plan (and keeps that context): one booking, then the quota.
    book_slot(&b, &tenant.key, &room, 0).await.expect(201);
    refused(book_slot(&b, &tenant.key, &room, 1).await, 1, 1);
    refused(book_slot(&b, &tenant.key, &room, 1).await, 1, 1);

    // Upgraded on `a`: the next booking on `b` is decided on the roomy plan, and so are the
    // ones after it on both.
    a.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "roomy"})).await.expect(200);
    book_slot(&b, &tenant.key, &room, 1).await.expect(201);
    book_slot(&a, &tenant.key, &room, 2).await.expect(201);
    book_slot(&b, &tenant.key, &room, 3).await.expect(201);
    refused(book_slot(&b, &tenant.key, &room, 4).await, 4, 4);
    refused(book_slot(&a, &tenant.key, &room, 4).await, 4, 4);

    // Downgraded at once on `b`: `a` and `b` refuse with the tiny plan's limit.
    b.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "tiny", "immediately": true})).await.expect(200);
    refused(book_slot(&a, &tenant.key, &room, 4).await, 1, 4);
    refused(book_slot(&b, &tenant.key, &room, 4).await, 1, 4);
}
