//! Flat cost: `POST /v1/usage` latency with ~1k and with ~1M prior usage events in the
//! tenant's history, through the real server against real Postgres, in one run.
//!
//! `cargo bench -p e2e --bench flat_cost` (`BENCH_PRIOR_EVENTS` sets the large history,
//! default 1,000,000; `BENCH_SAMPLES` the requests measured per phase, default 500).

use std::time::{Duration, Instant};

use e2e::spawn_app;
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(app: &e2e::TestApp, key: &str, phase: &str, samples: usize) -> (Duration, Duration, Duration) {
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{phase}-{i}")});
        let started = Instant::now();
        let reply = app.post("/v1/usage", key, body).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / samples as u32;
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), mean)
}

/// Appends `count` usage facts for `tenant_id` straight into the event store (as the API would
/// have, one one-event stream per fact), then waits until they are numbered and projected.
async fn seed_history(app: &e2e::TestApp, tenant_id: uuid::Uuid, phase: &str, count: usize) -> Duration {
    let started = Instant::now();
    let chunk = 100_000;
    for from in (0..count).step_by(chunk) {
        let to = (from + chunk).min(count);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Usage', $1 || ':' || $4 || g, 1, 'UsageRecorded', '1.0',
                    jsonb_build_object('type', 'UsageRecorded', 'tenant_id', $1, 'metric', 'api_calls', 'kind', 'counter', 'quantity', 1,
                                       'idempotency_key', $4 || g, 'occurred_at', now() - interval '1 day', 'recorded_at', now()),
                    jsonb_build_object('tenant_id', $1, 'actor', 'system:bench', 'correlation_id', 'bench', 'causation_id', 'bench',
                                       'occurred_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
             FROM generate_series($2::bigint, $3::bigint - 1) g",
        )
        .bind(tenant_id.to_string())
        .bind(from as i64)
        .bind(to as i64)
        .bind(format!("seed-{phase}-"))
        .execute(&app.pool)
        .await
        .expect("seed insert");
    }
    app.state.settle_all().await;
    loop {
        let lag: i64 = sqlx::query_scalar(
            "SELECT max(h.position - r.position) FROM projection_runs r CROSS JOIN event_log_head h WHERE r.status = 'live'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if lag == 0 {
            // A real history accumulates over months with autovacuum running; a bulk load of
            // it in seconds is vacuumed once so that the measurement sees that steady state
            // (unvacuumed, the sequencer's queue and the projectors' tables are full of dead
            // rows from the load, and the large phase measures that instead).
            sqlx::query("VACUUM ANALYZE").execute(&app.pool).await.expect("vacuum");
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let prior = env("BENCH_PRIOR_EVENTS", 1_000_000);
    let samples = env("BENCH_SAMPLES", 500);
    let app = spawn_app().await;
    let tenant = app.create_tenant_on("bench-tenant", "enterprise").await;

    seed_history(&app, tenant.id, "small", 1_000).await;
    let (small_p50, small_p99, small_mean) = measure(&app, &tenant.key, "small", samples).await;

    let seeding = seed_history(&app, tenant.id, "large", prior).await;
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1").bind(tenant.id).fetch_one(&app.pool).await.unwrap();
    let (large_p50, large_p99, large_mean) = measure(&app, &tenant.key, "large", samples).await;

    println!("flat cost of POST /v1/usage ({samples} sequential requests per phase)");
    println!("{:<28} {:>10} {:>10} {:>10}", "history", "p50", "p99", "mean");
    println!("{:<28} {:>10.2?} {:>10.2?} {:>10.2?}", "~1k prior events", small_p50, small_p99, small_mean);
    println!("{:<28} {:>10.2?} {:>10.2?} {:>10.2?}", format!("{history} prior events"), large_p50, large_p99, large_mean);
    println!(
        "ratio large/small: p50 {:.2}, mean {:.2}",
        large_p50.as_secs_f64() / small_p50.as_secs_f64(),
        large_mean.as_secs_f64() / small_mean.as_secs_f64()
    );
    println!("seeding {prior} events (insert, sequence, project): {seeding:.1?} = {:.0} events/s", prior as f64 / seeding.as_secs_f64());
}
