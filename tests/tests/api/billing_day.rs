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
