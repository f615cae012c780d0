//! Rebuild and replay throughput on a large log, next to a plain `COPY` of the events table
//! measured in the same run.
//!
//! `cargo bench -p e2e --bench rebuild` (`BENCH_EVENTS`, default 1,000,000 usage events over
//! 100 tenants' streams). Each projection is built from position 0 on its own and swapped in;
//! then the real server answers `GET /v1/events` pages of 10,000 as NDJSON.

use std::time::Instant;

use futures::StreamExt;
use projections::{Projections, Sequencer};
use uuid::Uuid;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let count = env("BENCH_EVENTS", 1_000_000);
    let db = format!("sl_bench_{}", Uuid::new_v4().simple());
    let url = format!("{}/{db}", e2e::server_url());
    commands::db::ensure_database(&url).await.unwrap();
    let pool = commands::db::connect(&url, 8).await.unwrap();
    commands::db::migrate(&pool).await.unwrap();

    let seeding = Instant::now();
    for from in (0..count).step_by(100_000) {
        let to = (from + 100_000).min(count);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Usage', t.id || ':u-' || g, 1, 'UsageRecorded', '1.0',
                    jsonb_build_object('type', 'UsageRecorded', 'tenant_id', t.id, 'metric', 'api_calls', 'kind', 'counter', 'quantity', 1,
                                       'idempotency_key', 'u-' || g, 'occurred_at', now() - (g || ' seconds')::interval, 'recorded_at', now()),
                    jsonb_build_object('tenant_id', t.id, 'actor', 'system:bench', 'correlation_id', 'bench', 'causation_id', 'bench')
             FROM generate_series($1::bigint, $2::bigint - 1) g
             CROSS JOIN LATERAL (SELECT ('00000000-0000-0000-0000-' || lpad((g % 100)::text, 12, '0'))::uuid AS id) t",
        )
        .bind(from as i64)
        .bind(to as i64)
        .execute(&pool)
        .await
        .unwrap();
    }
    Sequencer::new(pool.clone()).drain().await.unwrap();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    let seeded = seeding.elapsed();

    let copy_started = Instant::now();
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_out_raw(
            "COPY (SELECT position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
                   FROM events ORDER BY position) TO STDOUT",
        )
        .await
        .unwrap();
    let mut copied_bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        copied_bytes += chunk.unwrap().len();
    }
    drop(copy);
    drop(conn);
    let copied = copy_started.elapsed();
    let rate = |d: std::time::Duration| count as f64 / d.as_secs_f64();

    println!("{count} events seeded and sequenced in {seeded:.1?}");
    println!("{:<34} {:>10} {:>14} {:>10}", "what", "seconds", "events/s", "vs COPY");
    println!(
        "{:<34} {:>10.2} {:>14.0} {:>10}",
        format!("COPY events TO STDOUT ({} MB)", copied_bytes / 1_000_000),
        copied.as_secs_f64(),
        rate(copied),
        "1.00"
    );
    for projection in projections::all() {
        let name = projection.name();
        let runner = Projections::new(pool.clone(), Sequencer::new(pool.clone()), vec![projection]);
        let started = Instant::now();
        runner.prepare().await.unwrap();
        let took = started.elapsed();
        println!(
            "{:<34} {:>10.2} {:>14.0} {:>10.3}",
            format!("rebuild projection {name}"),
            took.as_secs_f64(),
            rate(took),
            copied.as_secs_f64() / took.as_secs_f64()
        );
    }

    let mut config = api::Config::for_database(&url);
    config.admin_token = Some(e2e::ADMIN_TOKEN.to_owned());
    let app = api::Application::build(config).await.unwrap();
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (mut after, mut lines) = (0i64, 0usize);
    loop {
        let text = client
            .get(format!("{address}/v1/events?after={after}&limit=10000"))
            .bearer_auth(e2e::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let Some(last) = text.lines().last() else { break };
        lines += text.lines().count();
        after = serde_json::from_str::<serde_json::Value>(last).unwrap()["position"].as_i64().unwrap();
    }
    let replayed = started.elapsed();
    println!(
        "{:<34} {:>10.2} {:>14.0} {:>10.3}",
        format!("NDJSON replay over HTTP ({lines})"),
        replayed.as_secs_f64(),
        lines as f64 / replayed.as_secs_f64(),
        copied.as_secs_f64() / replayed.as_secs_f64()
    );
    let _ = stop.send(());
    let _ = server.await;
    pool.close().await;
    let admin = commands::db::connect(&format!("{}/postgres", e2e::server_url()), 1).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
}
