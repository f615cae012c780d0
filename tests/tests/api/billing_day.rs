//! A billing day at scale (issue 31): many subscriptions renewing at one instant, advanced many
//! at a time by the billing run, still invoiced exactly once each, even when the server is
//! killed mid-run and the run is repeated by a new one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::ADMIN_TOKEN;
use futures::StreamExt;
use serde_json::{json, Value};

/// Tenants signed up at one instant of the test clock.
const TENANTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_billing_run_killed_mid_way_and_run_again_invoices_every_renewal_exactly_once() {
    let db_name = format!("sl_test_{}", uuid::Uuid::new_v4().simple());
    let database_url = format!("{}/{db_name}", e2e::server_url());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let server = crate::instances::start_with(&database_url, &client, &[("SL_CHILD_TEST_CLOCK", "1")]).await;
    let url = server.url.clone();

    // Sign-ups at one instant (the test clock stands still), no trial: each is invoiced now and
    // renews at the same instant a month on.
    let signed_up = futures::stream::iter(0..TENANTS)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let mut body = e2e::TestApp::tenant_body(&format!("day-{i}"));
                body["trial_days"] = json!(0);
                let reply = client.post(format!("{url}/v1/tenants")).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap();
                assert_eq!(reply.status(), 201);
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(signed_up.len(), TENANTS);
    let clock: Value = client.get(format!("{url}/v1/admin/clock")).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    let now: chrono::DateTime<chrono::Utc> = clock["now"].as_str().unwrap().parse().unwrap();
    let renewal = now.checked_add_months(chrono::Months::new(1)).unwrap() + chrono::Duration::minutes(1);

    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&database_url).await.unwrap();
    let invoices = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE event_type = 'InvoiceIssued'").fetch_one(&pool).await.unwrap()
            as usize
    };
    assert_eq!(invoices(pool.clone()).await, TENANTS, "each sign-up invoiced once");

    // The clock's move runs billing; the server is killed once some renewals are in the log.
    let mover = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client.put(format!("{url}/v1/admin/clock")).bearer_auth(ADMIN_TOKEN).json(&json!({"now": renewal})).send().await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while invoices(pool.clone()).await < TENANTS + 20 {
        assert!(Instant::now() < deadline, "the billing run renews");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(mover.await.unwrap().is_err(), "the clock's move was cut off by the kill");
    // A statement the killed server had sent still runs, and commits, until its backend notices
    // the closed socket: count once no other session of this database is busy.
    let settled = Instant::now() + Duration::from_secs(10);
    loop {
        let busy: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if busy == 0 || Instant::now() > settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewed_before_kill = invoices(pool.clone()).await - TENANTS;
    assert!(renewed_before_kill < TENANTS, "the kill landed mid-run ({renewed_before_kill} of {TENANTS} renewed)");
    drop(server);

    // A new server (its test clock starts afresh at now) is moved to the same instant: the run
    // renews the rest, and nothing twice.
    let server = crate::instances::start_with(&database_url, &client, &[("SL_CHILD_TEST_CLOCK", "1")]).await;
    let reply =
        client.put(format!("{}/v1/admin/clock", server.url)).bearer_auth(ADMIN_TOKEN).json(&json!({"now": renewal})).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    let report: Value = reply.json().await.unwrap();
    assert_eq!(report["billing"]["invoices_issued"].as_u64(), Some((TENANTS - renewed_before_kill) as u64), "{report}");
    assert_eq!(report["billing"]["failures"], json!([]), "{report}");
    // Once more: nothing is due.
    let again: Value =
        client.post(format!("{}/v1/admin/billing/run", server.url)).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["invoices_issued"], 0, "{again}");

    // Each subscription: two invoices, numbered 1 and 2 without a gap, the second for the
    // renewed period.
    let rows: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT aggregate_id, payload ->> 'number', (payload ->> 'period_start')::timestamptz FROM events
         WHERE event_type = 'InvoiceIssued' ORDER BY aggregate_id, sequence",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_subscription: BTreeMap<String, Vec<(String, chrono::DateTime<chrono::Utc>)>> = BTreeMap::new();
    for (subscription, number, period_start) in rows {
        by_subscription.entry(subscription).or_default().push((number, period_start));
    }
    assert_eq!(by_subscription.len(), TENANTS);
    for (subscription, issued) in &by_subscription {
        let numbers: Vec<&str> = issued.iter().map(|(n, _)| n.rsplit('-').next().unwrap()).collect();
        assert_eq!(numbers, ["000001", "000002"], "{subscription}: {issued:?}");
        assert!(issued[1].1 > issued[0].1, "{subscription}: the second invoice is the renewal's: {issued:?}");
    }
    // And the invoices read model agrees (what clients see).
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM rm.invoices").fetch_one(&pool).await.unwrap();
    assert_eq!(seen as usize, 2 * TENANTS);
    drop(server);
    pool.close().await;
}

/// A subscription's commands load it from its snapshot and the events after it (issue 31: a
/// command's cost flat as the stream grows). Every month, the upcoming invoice (the billing run's
/// own decision, taken on the aggregate) from a server loading through snapshots equals the one
/// from a server on the same database replaying the whole stream; a snapshot of another version,
/// or one that does not deserialize, is ignored and replaced.
#[tokio::test]
async fn a_subscription_loaded_through_its_snapshot_decides_as_its_whole_stream_does() {
    let app = e2e::spawn_app_with(|c| {
        c.test_clock = true;
        c.webhook_secret = Some(e2e::WEBHOOK_SECRET.to_owned());
        c.snapshot_every = 4;
    })
    .await;
    let replaying = e2e::spawn_instance_with(&app, |c| c.snapshot_every = 0).await;
    app.set_clock("2027-01-01T00:00:00Z").await;
    let tenant = app.create_billed_tenant("snap", "starter").await;
    let credits = format!("/v1/tenants/{}/credits", tenant.id);
    app.post(&credits, ADMIN_TOKEN, json!({"amount": "7.50", "reason": "Goodwill"})).await.expect(201);
    let subscription: String = sqlx::query_scalar("SELECT aggregate_id FROM events WHERE aggregate_type = 'Subscription' LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let stream = |pool: sqlx::PgPool, id: String| async move {
        let (last, snapshot): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT max(sequence) FROM events WHERE aggregate_type = 'Subscription' AND aggregate_id = $1),
                    (SELECT sequence FROM snapshots WHERE aggregate_type = 'Subscription' AND aggregate_id = $1)",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        (last, snapshot)
    };
    let same_upcoming = |month: u32| {
        let (app, replaying, key) = (&app, &replaying, tenant.key.clone());
        async move {
            let ours = app.get("/v1/invoices/upcoming", &key).await.expect(200).clone();
            let theirs = replaying.get("/v1/invoices/upcoming", &key).await.expect(200).clone();
            assert_eq!(ours, theirs, "month {month}: the snapshot's decision differs from the whole stream's");
            ours
        }
    };
    let pay_open = || {
        let (app, key) = (&app, tenant.key.clone());
        async move {
            for invoice in app.invoices(&key).await.iter().filter(|i| i["status"] == "open") {
                let body = json!({"id": format!("evt_{}", invoice["id"].as_str().unwrap()), "type": "payment.succeeded",
                                  "invoice_id": invoice["id"], "amount": invoice["amount_due"], "currency": invoice["currency"]});
                app.payment_webhook(body).await.expect(200);
            }
        }
    };
    pay_open().await;
    for month in 1..=10u32 {
        let key = format!("snap-{month}");
        app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1000 * month, "idempotency_key": key}))
            .await
            .expect(202);
        if month == 4 {
            app.post("/v1/subscription/change-plan", &tenant.key, json!({"plan": "professional"})).await.expect(200);
        }
        let predicted = same_upcoming(month).await;
        app.set_clock(&format!("2027-{:02}-01T00:00:00Z", month + 1)).await;
        let issued = app.invoices(&tenant.key).await.last().unwrap().clone();
        assert_eq!((&issued["lines"], &issued["total"]), (&predicted["lines"], &predicted["total"]), "month {month}");
        pay_open().await;
    }
    // Snapshots were taken along the way, and the last is at most `every` events behind.
    let settle = |at_least: i64| {
        let (pool, id) = (app.pool.clone(), subscription.clone());
        async move {
            for _ in 0..100 {
                let (last, snapshot) = stream(pool.clone(), id.clone()).await;
                if snapshot.is_some_and(|s| s >= at_least && last - s < 4) {
                    return snapshot.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no recent snapshot: {:?}", stream(pool, id).await);
        }
    };
    let (last, _) = stream(app.pool.clone(), subscription.clone()).await;
    assert!(last > 40, "a long stream: {last} events");
    settle(last - 3).await;
    // A credit note decides on the books of every invoice, which snapshots leave out: it is
    // decided on the whole stream, so the first invoice's limit holds 10 months and snapshots on.
    let first = app.invoices(&tenant.key).await[0].clone();
    let notes = format!("/v1/invoices/{}/credit-notes", first["id"].as_str().unwrap());
    app.post(&notes, ADMIN_TOKEN, json!({"amount": "20.00", "reason": "Outage"})).await.expect(201);
    let refused = app.post(&notes, ADMIN_TOKEN, json!({"amount": "9.01", "reason": "Too much"})).await;
    refused.expect_error(409, "CONFLICT");
    assert_eq!(
        (&refused.body["error"]["details"]["subtotal"], &refused.body["error"]["details"]["credited"]),
        (&json!("29.00"), &json!("20.00"))
    );
    let snapshot: serde_json::Value = sqlx::query_scalar("SELECT state::jsonb FROM snapshots").fetch_one(&app.pool).await.unwrap();
    assert_eq!(snapshot["invoice_books"], json!({}), "snapshots stay compact");
    // A snapshot that does not deserialize is ignored (the whole stream decides) and replaced.
    sqlx::query("UPDATE snapshots SET state = '{\"not\": \"a subscription\"}'").execute(&app.pool).await.unwrap();
    same_upcoming(11).await;
    app.put("/v1/subscription/addons", &tenant.key, json!({"extra_users": 2})).await.expect(200);
    let (last, _) = stream(app.pool.clone(), subscription.clone()).await;
    let replaced = settle(last).await;
    assert_eq!(replaced, last, "the next command's state replaced the unreadable snapshot");
    same_upcoming(12).await;
    // A snapshot of another version of the state is ignored.
    sqlx::query("UPDATE snapshots SET version = version + 1, state = jsonb_set(state::jsonb, '{invoices_issued}', '999')::json")
        .execute(&app.pool)
        .await
        .unwrap();
    let upcoming = same_upcoming(13).await;
    assert!(!upcoming["number"].as_str().unwrap_or_default().ends_with("001000"), "{upcoming}");
    app.set_clock("2027-12-01T00:00:00Z").await;
    let mut numbers: Vec<String> = app.invoices(&tenant.key).await.iter().map(|i| i["number"].as_str().unwrap().to_owned()).collect();
    // The list's order is by issue instant, then id: the renewal and the upgrade's proration
    // issued at the same instant of month 4 come in either order. The numbers are what is held.
    numbers.sort();
    let expected: Vec<String> = (1..=numbers.len()).map(|n| format!("SNAP-{n:06}")).collect();
    assert_eq!(numbers, expected, "invoice numbers sequential without gaps");
}
