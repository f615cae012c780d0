//! Command and query throughput next to raw Postgres, in one run (the machine is shared and
//! noisy, so only ratios within a run mean much).
//!
//! `cargo bench -p e2e --bench throughput` (`BENCH_SECS` per measurement, default 10;
//! `BENCH_CLIENTS`, default `8,32,128`). Starts the real server on a fresh database, then:
//! - `POST /v1/usage` at each concurrency: requests/s, p50, p99; next to `pgbench` single-row
//!   INSERTs of an event-sized row into a table shaped like `events`, same concurrency;
//! - `POST /v1/bookings` at each concurrency (distinct slots);
//! - `POST /v1/usage/batch` (1,000 records a request, 8 clients) in events/s, next to `pgbench`
//!   inserting 1,000 rows per statement;
//! - `GET /v1/quota/api_calls` at 32 clients: requests/s, p99;
//! - the process's peak RSS (server and load generator together: an upper bound).
//!
//! Prints a Markdown table and writes it to `bench/results/throughput-<date>.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{spawn_app_with, ADMIN_TOKEN};
use serde_json::json;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Load {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failures: u64,
}

/// Runs `clients` loops of `request(n)` for `secs` seconds.
async fn load<F, Fut>(clients: usize, secs: u64, request: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (request, counter, failures) = (request.clone(), counter.clone(), failures.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if !request(n).await {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Load {
        per_second: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        failures: failures.load(Ordering::Relaxed),
    }
}

/// The most connections pgbench may open beside the server's pool (Debian's default
/// `max_connections` is 100; the server holds up to 32).
const PGBENCH_MAX_CLIENTS: usize = 60;

/// `pgbench` with `script` at `clients` (at most [`PGBENCH_MAX_CLIENTS`]) for `secs`:
/// transactions per second.
fn pgbench(url: &str, script: &str, clients: usize, secs: u64) -> f64 {
    let clients = clients.min(PGBENCH_MAX_CLIENTS);
    let file = std::env::temp_dir().join(format!("sl-bench-{}.sql", uuid::Uuid::now_v7()));
    std::fs::write(&file, script).unwrap();
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j", &clients.min(8).to_string(), "-T", &secs.to_string(), "-f"])
        .arg(&file)
        .arg(url)
        .output()
        .expect("pgbench runs (Debian package postgresql-client)");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|rest| rest.split_whitespace().next()).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}\n{}", String::from_utf8_lossy(&output.stderr)))
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

const EVENT_ROW: &str = "\\set n random(1, 2000000000)
INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES ('Usage', 'bench:' || :n || ':' || :client_id || ':' || random(), 1, 'UsageRecorded', '1.0',
 '{\"type\": \"UsageRecorded\", \"tenant_id\": \"0191c2b4-0000-7000-8000-000000000000\", \"metric\": \"api_calls\", \"kind\": \"counter\", \"quantity\": 1, \"idempotency_key\": \"k\", \"occurred_at\": \"2026-11-22T10:00:00Z\", \"recorded_at\": \"2026-11-22T10:00:00Z\"}',
 '{\"tenant_id\": \"0191c2b4-0000-7000-8000-000000000000\", \"actor\": \"api_key:0191c2b4-0000-7000-8000-000000000001\", \"correlation_id\": \"0191c2b4-0000-7000-8000-000000000002\", \"causation_id\": \"0191c2b4-0000-7000-8000-000000000002\", \"occurred_at\": \"2026-11-22T10:00:00Z\"}');
";

const EVENT_ROWS_1000: &str = "INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'Usage', 'bench:' || :client_id || ':' || random() || ':' || g, 1, 'UsageRecorded', '1.0',
 '{\"type\": \"UsageRecorded\", \"tenant_id\": \"0191c2b4-0000-7000-8000-000000000000\", \"metric\": \"api_calls\", \"kind\": \"counter\", \"quantity\": 1, \"idempotency_key\": \"k\", \"occurred_at\": \"2026-11-22T10:00:00Z\", \"recorded_at\": \"2026-11-22T10:00:00Z\"}',
 '{\"tenant_id\": \"0191c2b4-0000-7000-8000-000000000000\", \"actor\": \"api_key:0191c2b4-0000-7000-8000-000000000001\", \"correlation_id\": \"0191c2b4-0000-7000-8000-000000000002\", \"causation_id\": \"0191c2b4-0000-7000-8000-000000000002\", \"occurred_at\": \"2026-11-22T10:00:00Z\"}'
FROM generate_series(1, 1000) g;
";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs: u64 = env("BENCH_SECS", "10").parse().unwrap();
    let clients: Vec<usize> = env("BENCH_CLIENTS", "8,32,128").split(',').map(|c| c.trim().parse().unwrap()).collect();
    let app = spawn_app_with(|c| {
        c.db_max_connections = 32;
        c.request_timeout = Duration::from_secs(120);
    })
    .await;
    let url = format!("{}/{}", e2e::server_url(), app.db_name);
    eprintln!("server at {} (its /metrics split each command into the append and the rest)", app.address);
    // A plan without limits that get in the way of a load test.
    app.post(
        "/v1/plans",
        ADMIN_TOKEN,
        json!({"code": "bench", "name": "Bench", "monthly_price": "1.00", "limits": {}, "features": [], "rate_limit_per_minute": 1_000_000}),
    )
    .await
    .expect(201);
    let tenant = app.create_tenant_on("bench-tenant", "bench").await;
    // The raw comparison: a table shaped like `events` (same columns, keys and generated
    // column), without our triggers.
    sqlx::query("CREATE TABLE bench_events (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)")
        .execute(&app.pool)
        .await
        .unwrap();

    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(120)).build().unwrap();
    let base = app.address.clone();
    let mut rows = Vec::new();
    let run = uuid::Uuid::now_v7().simple().to_string();

    for &c in &clients {
        let (client2, base2, key, run2) = (client.clone(), base.clone(), tenant.key.clone(), run.clone());
        let ours =
            load(c, secs, move |n| {
                let (client, base, key) = (client2.clone(), base2.clone(), key.clone());
                let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{run2}-{c}-{n}")});
                async move {
                    client.post(format!("{base}/v1/usage")).bearer_auth(&key).json(&body).send().await.is_ok_and(|r| r.status() == 202)
                }
            })
            .await;
        let raw = pgbench(&url, EVENT_ROW, c, secs);
        rows.push(format!(
            "| `POST /v1/usage`, {c} clients | {:.0} req/s | {:.1} ms | {:.1} ms | pgbench single-row INSERT, {} clients: {raw:.0} tps | **{:.2}** | {} |",
            ours.per_second,
            ours.p50.as_secs_f64() * 1e3,
            ours.p99.as_secs_f64() * 1e3,
            c.min(PGBENCH_MAX_CLIENTS),
            ours.per_second / raw,
            ours.failures
        ));
        println!("{}", rows.last().unwrap());
    }

    let (status, room) = {
        let r = app.post("/v1/resources", &tenant.key, json!({"name": "Bench hall", "kind": "room", "capacity": 1})).await;
        (r.status, r.body)
    };
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_owned();
    let raw_128 = pgbench(&url, EVENT_ROW, *clients.last().unwrap(), secs);
    for &c in &clients {
        let (client2, base2, key, room2) = (client.clone(), base.clone(), tenant.key.clone(), room.clone());
        let offset = c as i64 * 1_000_000;
        let ours = load(c, secs, move |n| {
            let (client, base, key) = (client2.clone(), base2.clone(), key.clone());
            // Distinct 10-minute slots (bookings last at least 5 minutes).
            let start = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").unwrap() + chrono::Duration::minutes((offset + n as i64) * 10);
            let body = json!({"resource_id": room2, "starts_at": start.to_rfc3339(), "ends_at": (start + chrono::Duration::minutes(5)).to_rfc3339(),
                              "customer": {"name": "Bench", "email": "bench@example.com"}});
            async move {
                match client.post(format!("{base}/v1/bookings")).bearer_auth(&key).json(&body).send().await {
                    Ok(r) if r.status() == 201 => true,
                    Ok(r) => {
                        static SHOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                        if !SHOWN.swap(true, Ordering::Relaxed) {
                            eprintln!("first refused booking: {} {}", r.status(), r.text().await.unwrap_or_default());
                        }
                        false
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        rows.push(format!(
            "| `POST /v1/bookings`, {c} clients | {:.0} req/s | {:.1} ms | {:.1} ms | (single-row INSERT, {} clients: {raw_128:.0} tps) | {:.2} | {} |",
            ours.per_second,
            ours.p50.as_secs_f64() * 1e3,
            ours.p99.as_secs_f64() * 1e3,
            clients.last().unwrap().min(&PGBENCH_MAX_CLIENTS),
            ours.per_second / raw_128,
            ours.failures
        ));
        println!("{}", rows.last().unwrap());
    }

    {
        let (client2, base2, key, run2) = (client.clone(), base.clone(), tenant.key.clone(), run.clone());
        let ours = load(8, secs, move |n| {
            let (client, base, key) = (client2.clone(), base2.clone(), key.clone());
            let records: Vec<_> =
                (0..1000).map(|i| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{run2}-b{n}-{i}")})).collect();
            async move {
                client
                    .post(format!("{base}/v1/usage/batch"))
                    .bearer_auth(&key)
                    .json(&json!({ "records": records }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 202)
            }
        })
        .await;
        let raw = pgbench(&url, EVENT_ROWS_1000, 8, secs) * 1000.0;
        rows.push(format!(
            "| `POST /v1/usage/batch` (1,000 records), 8 clients | {:.0} events/s | {:.1} ms | {:.1} ms | pgbench 1,000-row INSERT: {raw:.0} rows/s | **{:.2}** | {} |",
            ours.per_second * 1000.0,
            ours.p50.as_secs_f64() * 1e3,
            ours.p99.as_secs_f64() * 1e3,
            ours.per_second * 1000.0 / raw,
            ours.failures
        ));
        println!("{}", rows.last().unwrap());
    }

    {
        let (client2, base2, key) = (client.clone(), base.clone(), tenant.key.clone());
        let ours = load(32, secs, move |_| {
            let (client, base, key) = (client2.clone(), base2.clone(), key.clone());
            async move { client.get(format!("{base}/v1/quota/api_calls")).bearer_auth(&key).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        rows.push(format!(
            "| `GET /v1/quota/api_calls`, 32 clients | {:.0} req/s | {:.1} ms | {:.1} ms | | | {} |",
            ours.per_second,
            ours.p50.as_secs_f64() * 1e3,
            ours.p99.as_secs_f64() * 1e3,
            ours.failures
        ));
        println!("{}", rows.last().unwrap());
    }

    let date = chrono::Utc::now().format("%Y-%m-%d");
    let table = format!(
        "# Throughput, {date}\n\n`cargo bench -p e2e --bench throughput` ({secs} s per measurement; server and Postgres on one {}-core machine)\n\n\
| what | ours | p50 | p99 | raw Postgres, same run | ratio | failed |\n|---|---|---|---|---|---|---|\n{}\n\nPeak RSS of the bench process (server + load generator): {:.0} MiB\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rows.join("\n"),
        peak_rss_mib()
    );
    println!("\n{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("throughput-{date}.md")), &table).unwrap();
}
