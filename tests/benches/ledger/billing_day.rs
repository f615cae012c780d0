//! Phase 9 (issue 31): a billing day. `BENCH_BILLING_TENANTS` (default `1000,10000`) subscriptions
//! renewing at one instant, each count on a fresh database and server (test clock), once per
//! `BENCH_BILLING_CONCURRENCY` (default `1,64`: one after another as before, and the server's
//! default); the renewals/s next to `pgbench` single-row INSERTs of an event-sized row at 8 clients
//! in the same database right after. Then sign-ups at 8 clients through `POST /v1/tenants`, next
//! to the same raw rate.
//!
//! Then `BENCH_HISTORY_TENANTS` (default 4,000) renewing with 36 renewals of history against as
//! many with 1, both in one database (the cost of a subscription command as its stream grows,
//! with snapshots seeded as the server's policy would have taken them), and the billing
//! projection alone (a rebuild of `billing` over that log).
//!
//! The subscriptions are made by the domain itself (a start on the starter plan, each invoice
//! paid) and appended in SQL as the server's writer numbers events; the server projects them, the
//! clock's move (`PUT /v1/admin/clock`) runs the billing run and answers its report.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use domain::plan::BillingPeriod;
use domain::subscription::{PaymentOutcome, PlanTerms, StartSubscription, Subscription, SubscriptionCommand as C, SubscriptionEvent};
use futures::StreamExt;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::simulation::{metadata, Meter};
use super::{env, mean_ms, pgbench, section, settled, total, Http, Server, ADMIN, EVENT_ROW};

/// Appends `n` subscriptions started `months` months before `renewing` minus a month
/// (starter, monthly, no trial) and renewed by the domain every month since, each invoice paid an
/// hour after it was issued: their next renewal is at `renewing`. Returns the events appended.
async fn seed(pool: &PgPool, n: usize, renewing: DateTime<Utc>, months: u32) -> usize {
    let start = renewing.checked_sub_months(chrono::Months::new(months + 1)).expect("a month");
    let plan = PlanTerms::of(&domain::plan::default_catalog()[0]);
    let meter: <Subscription as Aggregate>::Services = std::sync::Arc::new(Meter(Vec::new()));
    let mut rows: Vec<(String, i64, String, String, String)> = Vec::new();
    let mut snapshots: Vec<(String, i64, String)> = Vec::new();
    for g in 0..n {
        let (tenant, subscription) = (Uuid::new_v4(), Uuid::new_v4());
        let mut state = Subscription::default();
        let mut commands: std::collections::VecDeque<(DateTime<Utc>, C)> = std::collections::VecDeque::new();
        commands.push_back((
            start,
            C::Start(Box::new(StartSubscription {
                subscription_id: subscription,
                tenant_id: tenant,
                tenant_code: format!("day-{g}"),
                currency: "EUR".into(),
                tax_rate: domain::values::TaxRate::parse("8.1").expect("a rate"),
                plan: plan.clone(),
                billing_period: BillingPeriod::Monthly,
                trial_days: 0,
                net_terms_days: 0,
                at: start,
            })),
        ));
        for m in 1..=months {
            let as_of = start.checked_add_months(chrono::Months::new(m)).expect("a month");
            commands.push_back((as_of, C::AdvanceTo { as_of }));
        }
        let mut sequence = 0i64;
        // Snapshots as the server's default policy would have taken them along the way.
        let policy = commands::snapshots::SnapshotPolicy {
            every: env("BENCH_SNAPSHOT_EVERY", &commands::snapshots::DEFAULT_EVERY.to_string()).parse().expect("BENCH_SNAPSHOT_EVERY"),
            version: domain::subscription::STATE_VERSION,
        };
        let mut snapshot_at = 0i64;
        let mut snapshot: Option<String> = None;
        while let Some((at, command)) = commands.pop_front() {
            let replayed = (sequence - snapshot_at) as usize;
            let before = sequence;
            let name = command.name();
            let sink = EventSink::default();
            state.handle(command, &meter, &sink).await.unwrap_or_else(|e| panic!("seeding day-{g}: {name}: {e}"));
            let meta = metadata(tenant, Some(name), at);
            for event in sink.collect().await {
                if let SubscriptionEvent::InvoiceIssued { invoice_id, paid_at: None, .. } = &event {
                    let amount = state.unpaid.get(invoice_id).copied().unwrap_or_default();
                    let paid = at + chrono::Duration::hours(1);
                    commands.push_front((
                        paid,
                        C::RecordPayment {
                            payment_id: format!("pay-{invoice_id}"),
                            invoice_id: *invoice_id,
                            outcome: PaymentOutcome::Succeeded { amount, currency: "EUR".into(), offline: None },
                            at: paid,
                        },
                    ));
                }
                sequence += 1;
                rows.push((
                    subscription.to_string(),
                    sequence,
                    event.event_type(),
                    serde_json::to_string(&event).expect("an event"),
                    meta.clone(),
                ));
            }
            if policy.every > 0 && policy.due(replayed, (sequence - before) as usize) {
                snapshot_at = sequence;
                snapshot = Some(serde_json::to_string(&state.compact()).expect("a state"));
            }
        }
        if let Some(state) = snapshot {
            snapshots.push((subscription.to_string(), snapshot_at, state)); // the server keeps the last
        }
    }
    for chunk in snapshots.chunks(5_000) {
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, sequence, version, state)
             SELECT 'Subscription', a, s, $4, st::json FROM unnest($1::text[], $2::bigint[], $3::text[]) AS u(a, s, st)",
        )
        .bind(chunk.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
        .bind(domain::subscription::STATE_VERSION)
        .execute(pool)
        .await
        .expect("the seeded snapshots");
    }
    for chunk in rows.chunks(20_000) {
        let mut tx = pool.begin().await.expect("a transaction");
        let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(&mut *tx).await.expect("the head");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
             SELECT 'Subscription', a, s, t, '1.0', p::jsonb, m::jsonb, $6 + n
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(a, s, t, p, m, n)",
        )
        .bind(chunk.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.4.clone()).collect::<Vec<_>>())
        .bind(head)
        .execute(&mut *tx)
        .await
        .expect("the seeded subscriptions");
        sqlx::query("UPDATE event_log_head SET position = $1").bind(head + chunk.len() as i64).execute(&mut *tx).await.expect("the head");
        tx.commit().await.expect("the seed commits");
    }
    rows.len()
}

/// With `BENCH_PG_STAT=1` (and `pg_stat_statements` loaded, its extension in database
/// `postgres`): forgets the statements' statistics so far.
async fn pg_stat_reset() {
    if std::env::var_os("BENCH_PG_STAT").is_none() {
        return;
    }
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", e2e::server_url()))
        .await
        .expect("postgres");
    sqlx::query("SELECT pg_stat_statements_reset()").execute(&admin).await.expect("pg_stat_statements");
}

/// With `BENCH_PG_STAT=1`: prints `db`'s statements by total time since [`pg_stat_reset`].
async fn pg_stat_top(db: &str) {
    if std::env::var_os("BENCH_PG_STAT").is_none() {
        return;
    }
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", e2e::server_url()))
        .await
        .expect("postgres");
    let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time, mean_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 140)
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 ORDER BY total_exec_time DESC LIMIT 20",
    )
    .bind(db)
    .fetch_all(&admin)
    .await
    .expect("pg_stat_statements");
    for (calls, total, mean, query) in rows {
        eprintln!("  {calls:>7} {total:>9.0} ms {mean:>8.3} ms  {query}");
    }
}

/// A fresh database and a server on the test clock with `concurrency`.
async fn fresh(concurrency: usize) -> (String, String, Server, PgPool) {
    let db = format!("sl_bench_day_{}", Uuid::new_v4().simple());
    let url = format!("{}/{db}?sslmode={}", e2e::server_url(), env("BENCH_SSLMODE", "disable"));
    let server =
        Server::start_with(&url, &[("SL_BENCH_TEST_CLOCK", "1".to_owned()), ("SL_BENCH_BILLING_CONCURRENCY", concurrency.to_string())]);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("the bench database");
    sqlx::query("CREATE TABLE bench_events (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)")
        .execute(&pool)
        .await
        .expect("the raw table");
    (db, url, server, pool)
}

async fn drop_database(db: &str) {
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        return;
    }
    if let Ok(admin) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", e2e::server_url())).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
    }
}

pub async fn phase(out: &mut String) {
    let counts: Vec<usize> = env("BENCH_BILLING_TENANTS", "1000,10000")
        .split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().parse().expect("BENCH_BILLING_TENANTS"))
        .collect();
    let counts: Vec<usize> = counts.into_iter().filter(|&n| n > 0).collect();
    let deep: usize = env("BENCH_HISTORY_TENANTS", "4000").parse().expect("BENCH_HISTORY_TENANTS");
    let signups: usize = env("BENCH_SIGNUPS", "6000").parse().expect("BENCH_SIGNUPS");
    if counts.is_empty() && deep == 0 && signups == 0 {
        return;
    }
    let concurrencies: Vec<usize> =
        env("BENCH_BILLING_CONCURRENCY", "1,64").split(',').map(|c| c.trim().parse().expect("BENCH_BILLING_CONCURRENCY")).collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).timeout(Duration::from_secs(3600)).build().expect("a client");
    let mut rows = Vec::new();
    for &n in &counts {
        for &concurrency in &concurrencies {
            if concurrency == 1 && n > 10_000 {
                continue; // hours, and the point is made at 10,000
            }
            let (db, url, server, pool) = fresh(concurrency).await;
            let http = Http { client: client.clone(), base: server.address.clone() };
            let (_, clock) = http.get("/v1/admin/clock", ADMIN).await;
            let now: DateTime<Utc> = clock["now"].as_str().expect("the test clock").parse().expect("an instant");
            let renewal = now + chrono::Duration::days(10);
            let seeding = Instant::now();
            let events = seed(&pool, n, renewal, 0).await;
            settled(&pool).await;
            let seeded = seeding.elapsed();
            sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
            let renewal = renewal + chrono::Duration::minutes(1);
            let started = Instant::now();
            let (status, reply) = http.send(reqwest::Method::PUT, "/v1/admin/clock", ADMIN, Some(&json!({"now": renewal}))).await;
            let took = started.elapsed().as_secs_f64();
            assert_eq!(status, 200, "{reply}");
            let issued = reply["billing"]["invoices_issued"].as_u64().unwrap_or(0) as usize;
            assert_eq!(issued, n, "every subscription renewed once: {reply}");
            let raw = pgbench(&url, EVENT_ROW, 8, 5);
            let rate = n as f64 / took;
            rows.push(format!(
                "| {n} renewing at one instant, {concurrency} at once | {events} events seeded, projected in {:.1} s | {took:.1} s | **{rate:.0}/s** | {raw:.0} tps | **{:.3}** | {:.2} ms |",
                seeded.as_secs_f64(),
                rate / raw,
                took * 1000.0 / n as f64
            ));
            eprintln!("{}", rows.last().expect("a row"));
            drop(server);
            pool.close().await;
            drop_database(&db).await;
        }
    }
    // The cost of a renewal with a long history: subscriptions with 36 renewals behind them
    // against as many with 1, in one database (so that the size of the database is the same for
    // both and only the streams' histories differ), renewing a day apart: the long histories
    // first, then the short, after an unmeasured warm-up cohort (a quarter as many, 1 renewal of
    // history) renewing the day before, so that neither measured cohort pays the server's and
    // the database's first run. The server's default concurrency.
    let mut per_renewal = Vec::new();
    if deep > 0 {
        let (db, _url, server, pool) = fresh(64).await;
        let http = Http { client: client.clone(), base: server.address.clone() };
        let (_, clock) = http.get("/v1/admin/clock", ADMIN).await;
        let now: DateTime<Utc> = clock["now"].as_str().expect("the test clock").parse().expect("an instant");
        let mut cohorts = [(36u32, now + chrono::Duration::days(10)), (1u32, now + chrono::Duration::days(11))];
        if std::env::var("BENCH_HISTORY_ORDER").as_deref() == Ok("short-first") {
            cohorts = [(1u32, now + chrono::Duration::days(10)), (36u32, now + chrono::Duration::days(11))];
        }
        let warm_up = now + chrono::Duration::days(9);
        seed(&pool, (deep / 4).max(1), warm_up, 1).await;
        let mut seeded = Vec::new();
        for (months, renewal) in cohorts {
            seeded.push(seed(&pool, deep, renewal, months).await);
        }
        settled(&pool).await;
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
        let body = json!({"now": warm_up + chrono::Duration::minutes(1)});
        let (status, reply) = http.send(reqwest::Method::PUT, "/v1/admin/clock", ADMIN, Some(&body)).await;
        assert_eq!(status, 200, "{reply}");
        for ((months, renewal), events) in cohorts.into_iter().zip(seeded) {
            // Dirty pages are written now, not by a checkpoint during the measurement.
            sqlx::query("CHECKPOINT").execute(&pool).await.expect("checkpoint");
            let before = http.metrics().await;
            pg_stat_reset().await;
            let started = Instant::now();
            let body = json!({"now": renewal + chrono::Duration::minutes(1)});
            let (status, reply) = http.send(reqwest::Method::PUT, "/v1/admin/clock", ADMIN, Some(&body)).await;
            let took = started.elapsed().as_secs_f64();
            let after = http.metrics().await;
            pg_stat_top(&db).await;
            let (command, commands) = mean_ms(&before, &after, "saas_ledger_command_duration_seconds", &["aggregate=\"Subscription\""]);
            let (flush, flushes) = mean_ms(&before, &after, "saas_ledger_append_flush_seconds", &[]);
            eprintln!("  {months} months: subscription command {command:.2} ms ({commands:.0}), appends {flush:.2} ms ({flushes:.0})");
            assert_eq!(status, 200, "{reply}");
            assert_eq!(reply["billing"]["invoices_issued"].as_u64(), Some(deep as u64), "{reply}");
            per_renewal.push((months, took * 1000.0 / deep as f64));
            rows.push(format!(
                "| {deep} renewing with {months} renewal(s) of history, 64 at once (one database, both cohorts) | {events} events | {took:.1} s | **{:.0}/s** | | | {:.2} ms |",
                deep as f64 / took,
                per_renewal.last().expect("a figure").1
            ));
            eprintln!("{}", rows.last().expect("a row"));
        }
        for name in ["billing", "revenue"] {
            rows.push(projection_rebuild(&http, &pool, name).await);
            eprintln!("{}", rows.last().expect("a row"));
        }
        drop(server);
        pool.close().await;
        drop_database(&db).await;
    }
    let cohort = |m: u32| per_renewal.iter().find(|(months, _)| *months == m).map(|c| c.1);
    if let (Some(deep), Some(one)) = (cohort(36), cohort(1)) {
        rows.push(format!("| time per renewal, 36 renewals of history vs 1 | | | | | **{:.2}** | |", deep / one));
    }
    if signups > 0 {
        signup_rows(&client, signups, &mut rows).await;
    }
    section(
        out,
        "A billing day (issue 31: renewals/s ≥ 0.3× raw single-row INSERTs at 8 clients; sign-ups ≥ 0.1×)",
        "| what | seeded | time | rate | raw INSERT, 8 clients | ratio | per item |",
        &rows,
    );
}

/// One projection alone: a rebuild of `name` (`billing`; `revenue`, the books, issue 33) over the
/// log (the subscriptions with their history and renewal), timed from the request to the swap;
/// Subscription events per second.
async fn projection_rebuild(http: &Http, pool: &PgPool, name: &str) -> String {
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Subscription'").fetch_one(pool).await.expect("a count");
    sqlx::query("CHECKPOINT").execute(pool).await.expect("checkpoint");
    let started = Instant::now();
    let (status, reply) = http.post(&format!("/v1/admin/projections/{name}/rebuild"), ADMIN, &json!({})).await;
    assert!(status == 202 || status == 200, "{status} {reply}");
    loop {
        let (_, runs) = http.get("/v1/admin/projections", ADMIN).await;
        let runs: Vec<&serde_json::Value> = runs.as_array().map(|r| r.iter().filter(|r| r["name"] == name).collect()).unwrap_or_default();
        if runs.len() == 1 && runs[0]["status"] == "live" && runs[0]["generation"].as_i64() > Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed().as_secs_f64();
    format!(
        "| the {name} projection alone: rebuild of `{name}` over {events} Subscription events | | {took:.1} s | **{:.0} events/s** | | | |",
        events as f64 / took
    )
}

/// Sign-ups at 8 clients through `POST /v1/tenants`, and where a sign-up's time goes.
async fn signup_rows(client: &reqwest::Client, signups: usize, rows: &mut Vec<String>) {
    let (db, url, server, pool) = fresh(64).await;
    let http = Http { client: client.clone(), base: server.address.clone() };
    let before = http.metrics().await;
    pg_stat_reset().await;
    let started = Instant::now();
    let created = futures::stream::iter(0..signups)
        .map(|i| {
            let http = http.clone();
            async move {
                let body = json!({"code": format!("sign-{i}"), "name": format!("Sign-up {i}"), "business_type": "clinic", "currency": "EUR",
                                  "billing_email": format!("billing@sign-{i}.example"), "plan": "starter", "billing_period": "monthly",
                                  "trial_days": 14, "tax_rate": "8.1"});
                http.post("/v1/tenants", ADMIN, &body).await.0 == 201
            }
        })
        .buffer_unordered(8)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let took = started.elapsed().as_secs_f64();
    pg_stat_top(&db).await;
    assert_eq!(created, signups, "every sign-up answered 201");
    let raw = pgbench(&url, EVENT_ROW, 8, 5);
    let rate = signups as f64 / took;
    rows.push(format!(
        "| {signups} sign-ups (`POST /v1/tenants`), 8 clients | | {took:.1} s | **{rate:.0}/s** | {raw:.0} tps | **{:.3}** | {:.2} ms |",
        rate / raw,
        took * 1000.0 * 8.0 / signups as f64
    ));
    eprintln!("{}", rows.last().expect("a row"));
    let after = http.metrics().await;
    let (request, _) = mean_ms(&before, &after, "saas_ledger_http_request_duration_seconds", &["route=\"/v1/tenants\"", "method=\"POST\""]);
    let (tenant, _) = mean_ms(&before, &after, "saas_ledger_command_duration_seconds", &["aggregate=\"Tenant\""]);
    let (subscription, _) = mean_ms(&before, &after, "saas_ledger_command_duration_seconds", &["aggregate=\"Subscription\""]);
    let (settle, _) = mean_ms(&before, &after, "saas_ledger_settle_duration_seconds", &[]);
    let (flush, flushes) = mean_ms(&before, &after, "saas_ledger_append_flush_seconds", &[]);
    let shared = total(&after, "saas_ledger_append_flush_commands_sum", &[]) - total(&before, "saas_ledger_append_flush_commands_sum", &[]);
    rows.push(format!(
        "| a sign-up's time: request {request:.1} ms = tenant command {tenant:.1} + subscription command {subscription:.1} + settle {settle:.1} + the rest {:.1}; appends {flush:.1} ms, {:.1} commands each | | | | | | |",
        request - tenant - subscription - settle,
        shared / flushes.max(1.0)
    ));
    for name in projections::all().iter().map(|p| p.name()) {
        let label = format!("projection=\"{name}\"");
        let (batch, batches) = mean_ms(&before, &after, "saas_ledger_projection_batch_seconds", &[&label]);
        if batches > 0.0 {
            let applied = total(&after, "saas_ledger_projection_batch_positions_sum", &[&label])
                - total(&before, "saas_ledger_projection_batch_positions_sum", &[&label]);
            rows.push(format!(
                "| projector `{name}` during sign-ups: {batch:.1} ms a batch, {:.1} positions, {batches:.0} batches | | | | | | |",
                applied / batches
            ));
        }
    }
    eprintln!("{}", rows[rows.len() - 1]);
    drop(server);
    pool.close().await;
    drop_database(&db).await;
}
