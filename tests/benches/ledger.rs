//! The benchmark: everything issue 7 asks for, in one run, next to raw Postgres measured in
//! the same run (the machine is shared and noisy: read the ratios).
//!
//! `cargo bench -p e2e --bench ledger`. Environment: `BENCH_SECS` per load measurement
//! (default 10), `BENCH_CLIENTS` (default `8,32,128`), `BENCH_EVENTS` (the large history,
//! default 1,000,000), `BENCH_SAMPLES` (sequential requests per flat-cost phase, default 300),
//! `BENCH_TENANTS` (default 16), `BENCH_REVENUE_TENANTS` (default 10,000), `BENCH_KEEP_DB` (set: keep
//! the database for a look afterwards), `BENCH_APPEND_WRITERS` (the server's group-commit writers,
//! default: the server's default), `BENCH_SSLMODE` (the `sslmode` of the server's and pgbench's
//! connections, default `disable`; `prefer` runs both over TLS).
//!
//! The server runs as a child process (this executable re-run as the server, the same
//! `api::Application` that `saas-ledger serve` runs) on a fresh database, so its peak RSS is its
//! own. The run:
//! 1. command throughput: `POST /v1/usage` and `POST /v1/bookings` at each concurrency, spread
//!    over the tenants (each booking on its own slot of one of each tenant's rooms), next to
//!    `pgbench` single-row INSERTs of an event-sized row into a copy of `events` at the same
//!    concurrency, both also driven by `wrk` where it is installed (each booking phase starts
//!    with the read models caught up); `POST /v1/usage/batch` (1,000 facts) next to 1,000-row
//!    INSERTs;
//! 2. where a command's time goes, from the server's own `/metrics`: the request, the command
//!    (load, decide, append), the wait for read models, the sequencer and projector batches;
//! 3. `GET /v1/quota/api_calls` at 32 clients;
//! 4. flat cost: sequential `POST /v1/usage` of one tenant with ~1k and with `BENCH_EVENTS`
//!    events in its history (seeded in SQL, numbered and projected by the server);
//! 5. rebuild of every projection on the server, and NDJSON replay (`GET /v1/events`) of the
//!    whole log, next to `COPY (SELECT .. FROM events) TO STDOUT` in the same run;
//! 6. the server's peak RSS;
//! 7. `GET /v1/admin/analytics/revenue` over `BENCH_REVENUE_TENANTS` (default 10,000)
//!    subscriptions with 36 months of history (seeded in SQL, projected by the server).
//!
//! 8. a price simulation (`POST /v1/admin/simulations`) over `BENCH_SIM_TENANTS` (default 10,000)
//!    tenants × 12 months of billing history made by the domain itself (on a second server and
//!    database of its own), with the real catalog (identity, checked) and with a new starter price.
//!    `BENCH_ONLY=simulation` runs this phase alone; `BENCH_SIM_TENANTS=0` skips it.
//! 9. a billing day (`ledger/billing_day.rs`): `BENCH_BILLING_TENANTS` (default `1000,10000`)
//!    subscriptions renewing at one instant, billed `BENCH_BILLING_CONCURRENCY` (default `1,64`) at
//!    once, `BENCH_HISTORY_TENANTS` (default 4,000) renewing with 36 and with 1 month of history, and
//!    `BENCH_SIGNUPS` (default 6,000) sign-ups at 8 clients, each next to raw INSERTs.
//!    `BENCH_ONLY=billing` runs this phase alone; each size `0` skips its part.
//!
//! 10. replica reads (`ledger/replicas.rs`): `GET /v1/quota/api_calls` served by a primary alone
//!     and with a hot standby as its replica, one run. `BENCH_ONLY=replicas` runs it alone.
//!
//! For quick comparisons: `BENCH_ONLY=commands` runs phases 1 and 2 alone and only prints them
//! (`BENCH_KEEP_DB` keeps its database too), and `BENCH_COMMANDS` (default
//! `usage,wrk,bookings,batch`) picks the command phases.
//!
//! Prints the tables and writes them to `bench/results/<date>.md`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;

/// The server's allocator (`api/src/main.rs`): this process runs the server too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The server's allocator options (`api/src/main.rs`), for the same reason.
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:2,dirty_decay_ms:1000\0";

const ADMIN: &str = e2e::ADMIN_TOKEN;

#[path = "ledger/simulation.rs"]
mod simulation;

#[path = "ledger/billing_day.rs"]
mod billing_day;
#[path = "ledger/replicas.rs"]
mod replicas;

#[path = "ledger/wrk.rs"]
mod wrk;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    match std::env::var("SL_BENCH_SERVE") {
        Ok(url) => runtime.block_on(serve(url)),
        Err(_) if env("BENCH_ONLY", "") == "simulation" => runtime.block_on(async {
            let mut out = String::new();
            simulation_phase(&mut out).await;
        }),
        Err(_) if env("BENCH_ONLY", "") == "replicas" => runtime.block_on(async {
            let mut out = String::new();
            replicas::phase(&mut out).await;
            println!("{out}");
        }),
        Err(_) if env("BENCH_ONLY", "") == "billing" => runtime.block_on(async {
            let mut out = String::new();
            billing_day::phase(&mut out).await;
            println!("{out}");
        }),
        Err(_) => runtime.block_on(run()),
    }
}

/// The child: the server on `url` until its parent closes stdin (or dies).
async fn serve(url: String) {
    let mut config = api::Config::for_database(&url);
    config.admin_token = Some(ADMIN.to_owned());
    config.db_max_connections = 32;
    config.request_timeout = Duration::from_secs(300);
    if let Ok(writers) = std::env::var("BENCH_APPEND_WRITERS") {
        config.append_writers = writers.parse().expect("BENCH_APPEND_WRITERS");
    }
    if std::env::var("SL_BENCH_TEST_CLOCK").is_ok_and(|v| v == "1") {
        config.test_clock = true;
        config.billing_interval = Duration::from_secs(24 * 3600);
        config.request_timeout = Duration::from_secs(3600);
    }
    if let Ok(n) = std::env::var("BENCH_SNAPSHOT_EVERY") {
        config.snapshot_every = n.parse().expect("BENCH_SNAPSHOT_EVERY");
    }
    if let Ok(urls) = std::env::var("SL_BENCH_REPLICA_URLS") {
        config.replica_urls = urls.split(',').map(str::to_owned).collect();
    }
    if let Ok(n) = std::env::var("SL_BENCH_BILLING_CONCURRENCY") {
        config.billing_concurrency = n.parse().expect("SL_BENCH_BILLING_CONCURRENCY");
    }
    let app = api::Application::build(config).await.expect("the server starts");
    println!("listening http://{}", app.local_addr());
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    });
    app.run_until(async {
        let _ = stdin_closed.await;
    })
    .await
    .expect("the server runs");
}

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(url: &str) -> Self {
        Self::start_with(url, &[])
    }

    /// [`Self::start`] with more environment for the server (`SL_BENCH_TEST_CLOCK`, ...).
    fn start_with(url: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this executable"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SL_BENCH_SERVE", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server process starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the server's address");
        let address = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("unexpected first line: {line}")).to_owned();
        Self { child, address }
    }

    /// The server's peak resident set so far (`VmHWM`), in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

struct Load {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    failures: u64,
}

impl Load {
    /// A table row for `what` at `clients`, next to `tps` raw single-row INSERTs.
    fn row_against(&self, what: &str, clients: usize, tps: f64) -> String {
        format!(
            "| {what}, {clients} clients | {:.0} req/s | {} | {} | {tps:.0} tps ({} clients) | **{:.2}** | {} |",
            self.per_second,
            ms(self.p50),
            ms(self.p99),
            clients.min(PGBENCH_MAX_CLIENTS),
            self.per_second / tps,
            self.failures
        )
    }
}

/// Runs `clients` loops of `request(n)` for `secs` seconds (closed loop: each client sends its
/// next request when the previous one is answered).
async fn load<F, Fut>(clients: usize, secs: u64, request: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (all, elapsed, failures) = load_raw(clients, Duration::from_secs(secs), Arc::new(request), Arc::new(AtomicU64::new(0))).await;
    summarize(all, elapsed, failures)
}

fn summarize(mut all: Vec<Duration>, elapsed: f64, failures: u64) -> Load {
    all.sort();
    Load { per_second: all.len() as f64 / elapsed, p50: percentile(&all, 0.5), p99: percentile(&all, 0.99), failures }
}

async fn load_raw<F, Fut>(clients: usize, window: Duration, request: Arc<F>, counter: Arc<AtomicU64>) -> (Vec<Duration>, f64, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + window;
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
        all.extend(task.await.expect("a client"));
    }
    (all, started.elapsed().as_secs_f64(), failures.load(Ordering::Relaxed))
}

/// Slices of each measurement: ours and pgbench alternate this many times, so that a
/// neighbour's load on the machine (CPU steal) falls on both sides alike.
const SLICES: u64 = 3;

/// `request` at `clients` for `secs` in all, alternating with `pgbench` running `script` at the
/// same concurrency: our load and the raw rate (per second, times `rows` rows per transaction).
async fn against_pgbench<F, Fut>(url: &str, script: &str, clients: usize, secs: u64, request: F) -> (Load, f64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (request, counter) = (Arc::new(request), Arc::new(AtomicU64::new(0)));
    let slice = (secs / SLICES).max(1);
    let (mut all, mut elapsed, mut failures, mut tps) = (Vec::new(), 0.0, 0, 0.0);
    for _ in 0..SLICES {
        let (latencies, took, failed) = load_raw(clients, Duration::from_secs(slice), request.clone(), counter.clone()).await;
        all.extend(latencies);
        elapsed += took;
        failures += failed;
        tps += pgbench(url, script, clients, slice) / SLICES as f64;
    }
    (summarize(all, elapsed, failures), tps)
}

/// The most connections pgbench may open beside the server's (Debian's default
/// `max_connections` is 100; the server's pool holds up to 32, its projectors, sequencer and
/// writers a few more, this process a few).
const PGBENCH_MAX_CLIENTS: usize = 50;

/// `pgbench` running `script` at `clients` (at most [`PGBENCH_MAX_CLIENTS`]) for `secs`: tps.
fn pgbench(url: &str, script: &str, clients: usize, secs: u64) -> f64 {
    let clients = clients.min(PGBENCH_MAX_CLIENTS);
    let file = std::env::temp_dir().join(format!("sl-bench-{}.sql", uuid::Uuid::now_v7()));
    std::fs::write(&file, script).expect("a temporary file");
    let output = Command::new("pgbench")
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

/// A tenant of the run: its key and rooms.
#[derive(Clone)]
struct Tenant {
    id: String,
    key: String,
    rooms: Vec<String>,
}

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn send(&self, method: reqwest::Method, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    async fn sign_up(&self, code: &str, rooms: usize) -> Tenant {
        let body = json!({"code": code, "name": format!("Bench {code}"), "business_type": "clinic", "timezone": "UTC", "currency": "EUR",
                          "locale": "de-CH", "billing_email": format!("billing@{code}.example"), "plan": "bench", "billing_period": "monthly",
                          "trial_days": 0, "tax_rate": "8.1"});
        let (status, created) = self.post("/v1/tenants", ADMIN, &body).await;
        assert_eq!(status, 201, "{created}");
        let key = created["api_key"].as_str().expect("a key").to_owned();
        let mut ids = Vec::new();
        for i in 0..rooms {
            let (status, room) =
                self.post("/v1/resources", &key, &json!({"name": format!("Room {i}"), "kind": "room", "capacity": 1})).await;
            assert_eq!(status, 201, "{room}");
            ids.push(room["id"].as_str().expect("an id").to_owned());
        }
        Tenant { id: created["id"].as_str().expect("an id").to_owned(), key, rooms: ids }
    }

    /// `/metrics` as `name{labels}` → value.
    async fn metrics(&self) -> HashMap<String, f64> {
        let text = self.client.get(format!("{}/metrics", self.base)).send().await.expect("metrics").text().await.expect("a body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(name, value)| Some((name.to_owned(), value.parse().ok()?))))
            .collect()
    }
}

/// The sum of every series of `metric` whose labels contain all of `labels`.
fn total(metrics: &HashMap<String, f64>, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .iter()
        .filter(|(name, _)| name.split('{').next() == Some(metric) && labels.iter().all(|l| name.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// Mean of histogram `metric` (filtered by `labels`) between two scrapes, in ms, with its count.
fn mean_ms(before: &HashMap<String, f64>, after: &HashMap<String, f64>, metric: &str, labels: &[&str]) -> (f64, f64) {
    let sum = total(after, &format!("{metric}_sum"), labels) - total(before, &format!("{metric}_sum"), labels);
    let count = total(after, &format!("{metric}_count"), labels) - total(before, &format!("{metric}_count"), labels);
    (if count > 0.0 { sum / count * 1e3 } else { 0.0 }, count)
}

/// Waits until the server has numbered and projected everything; returns the head.
async fn settled(pool: &PgPool) -> i64 {
    loop {
        let (head, least, queued): (i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT h.position, (SELECT min(position) FROM projection_runs WHERE status = 'live'), (SELECT count(*) FROM events_unsequenced)
             FROM event_log_head h",
        )
        .fetch_one(pool)
        .await
        .expect("the log's state");
        if queued == 0 && least == Some(head) {
            return head;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends `count` usage facts of `tenant` in SQL (one one-event stream each, as the API would),
/// numbered as the server's writer numbers them: under the log head's lock, in the appending
/// transaction (one for all of them).
async fn seed(pool: &PgPool, tenant: &str, phase: &str, count: usize) {
    // One transaction: the live projection is then measured from the moment all of it is
    // visible (appending in slices while projecting measured the two fighting over 2 cores).
    let mut tx = pool.begin().await.expect("a transaction");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(&mut *tx).await.expect("the head");
    sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
             SELECT 'Usage', $1 || ':' || $3 || g, 1, 'UsageRecorded', '1.0',
                    jsonb_build_object('type', 'UsageRecorded', 'tenant_id', $1, 'metric', 'api_calls', 'kind', 'counter', 'quantity', 1,
                                       'idempotency_key', $3 || g, 'occurred_at', now() - (g % 2592000 || ' seconds')::interval, 'recorded_at', now()),
                    jsonb_build_object('tenant_id', $1, 'actor', 'system:bench', 'correlation_id', 'bench', 'causation_id', 'bench',
                                       'occurred_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')),
                    $4 + g + 1
             FROM generate_series(0, $2::bigint - 1) g",
    )
    .bind(tenant)
    .bind(count as i64)
    .bind(format!("seed-{phase}-"))
    .bind(head)
    .execute(&mut *tx)
    .await
    .expect("a seed insert");
    sqlx::query("UPDATE event_log_head SET position = $1").bind(head + count as i64).execute(&mut *tx).await.expect("the head");
    tx.commit().await.expect("the seed commits");
}

/// Appends, in SQL, `tenants` subscriptions whose histories spread over the last `months`
/// months, event payloads built by the domain's own types: each starts on a catalog plan
/// (every seventh yearly); three in ten change plan later, one in ten fails a payment and is
/// suspended a week later (half of those come back), one in five cancels; the others are in
/// their current period. Only the facts that move revenue: earlier periods and their invoices,
/// which analytics does not read, are left out. Numbered as the server's writer numbers events.
/// Returns how many events it appended.
async fn seed_revenue(pool: &PgPool, tenants: usize, months: i64) -> usize {
    use chrono::{DateTime, Utc};
    use domain::plan::BillingPeriod;
    use domain::subscription::{PlanTerms, SubscriptionEvent as E};
    let plans: Vec<PlanTerms> =
        domain::plan::default_catalog().iter().filter(|p| p.monthly_price > rust_decimal::Decimal::ZERO).map(PlanTerms::of).collect();
    let days = months * 30;
    let origin = chrono::Utc::now() - chrono::Duration::days(days);
    let (mut ids, mut sequences, mut types, mut payloads, mut metadata) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in 0..tenants as i64 {
        let (tenant, subscription) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let day = |d: i64| origin + chrono::Duration::days(d) + chrono::Duration::seconds(g * 7919 % 86_400);
        let mut history: Vec<(DateTime<Utc>, E)> = Vec::new();
        let first = g * 37 % (days - 1);
        let started = day(first);
        let period = if g % 7 == 0 { BillingPeriod::Yearly } else { BillingPeriod::Monthly };
        history.push((
            started,
            E::SubscriptionStarted {
                subscription_id: subscription,
                tenant_id: tenant,
                tenant_code: format!("rev-{g}"),
                currency: "EUR".into(),
                tax_rate: Default::default(),
                plan: plans[g as usize % plans.len()].clone(),
                billing_period: period,
                trial_ends_at: None,
                anchor: started,
                started_at: started,
                net_terms_days: 0,
            },
        ));
        let mut at = first;
        if g % 10 < 3 && at + 45 + g % 90 < days {
            at += 45 + g % 90;
            let plan = plans[(g as usize + 1) % plans.len()].clone();
            history.push((day(at), E::PlanChanged { plan, billing_period: period, new_anchor: None, effective_at: day(at) }));
        }
        if g % 10 == 9 && at + 50 < days {
            at += 40;
            history
                .push((day(at), E::PaymentFailed { payment_id: format!("p-{g}"), invoice_id: uuid::Uuid::new_v4(), failed_at: day(at) }));
            at += 7;
            history.push((day(at), E::SubscriptionSuspended { suspended_at: day(at) }));
            if g % 20 == 19 {
                at += 3;
                history.push((day(at), E::SubscriptionReactivated { reactivated_at: day(at) }));
            }
        }
        if g % 5 == 0 && at + 100 + g % 400 < days {
            at += 100 + g % 400;
            history.push((day(at), E::SubscriptionCancelled { cancelled_at: day(at), immediately: true }));
        }
        let cancelled = matches!(history.last(), Some((_, E::SubscriptionCancelled { .. })));
        if !cancelled {
            // The period running now, as if every earlier one had been billed: the server's
            // billing run then has nothing due (it would otherwise bill 36 months of periods).
            let now = chrono::Utc::now();
            let index = (0..).find(|&k| domain::billing::period::nth(started, period, k).end > now).expect("a current period");
            let current = domain::billing::period::nth(started, period, index);
            history.push((current.start, E::PeriodStarted { period_index: index, period_start: current.start, period_end: current.end }));
        }
        for (sequence, (when, event)) in history.into_iter().enumerate() {
            ids.push(subscription.to_string());
            sequences.push(sequence as i64 + 1);
            let payload = serde_json::to_value(&event).expect("an event");
            types.push(payload["type"].as_str().expect("a tagged event").to_owned());
            payloads.push(payload.to_string());
            metadata.push(
                json!({"tenant_id": tenant, "actor": "system:bench", "correlation_id": "bench", "causation_id": "bench",
                       "occurred_at": when.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)})
                .to_string(),
            );
        }
    }
    let count = ids.len();
    let mut tx = pool.begin().await.expect("a transaction");
    let head: i64 = sqlx::query_scalar("SELECT position FROM event_log_head FOR UPDATE").fetch_one(&mut *tx).await.expect("the head");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, position)
         SELECT 'Subscription', a, s, t, '1.0', p::jsonb, m::jsonb, $6 + n
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(a, s, t, p, m, n)",
    )
    .bind(&ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&payloads)
    .bind(&metadata)
    .bind(head)
    .execute(&mut *tx)
    .await
    .expect("the subscriptions' histories");
    sqlx::query("UPDATE event_log_head SET position = $1").bind(head + count as i64).execute(&mut *tx).await.expect("the head");
    tx.commit().await.expect("the seed commits");
    count
}

/// `samples` sequential `POST /v1/usage`: p50, p99, mean.
async fn sequential(http: &Http, key: &str, phase: &str, samples: usize) -> (Duration, Duration, Duration) {
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{phase}-{i}")});
        let started = Instant::now();
        let (status, reply) = http.post("/v1/usage", key, &body).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 202, "{reply}");
    }
    latencies.sort();
    let mean = latencies.iter().sum::<Duration>() / samples.max(1) as u32;
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), mean)
}

/// [`sequential`] for several tenants at once, taking turns request by request, so that each
/// sees the same machine (this one's commit latency moves by half between minutes).
async fn alternating(http: &Http, tenants: &[(&str, &str)], samples: usize) -> Vec<(Duration, Duration, Duration)> {
    let mut latencies = vec![Vec::with_capacity(samples); tenants.len()];
    for i in 0..samples {
        for ((key, phase), seen) in tenants.iter().zip(latencies.iter_mut()) {
            let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{phase}-{i}")});
            let started = Instant::now();
            let (status, reply) = http.post("/v1/usage", key, &body).await;
            seen.push(started.elapsed());
            assert_eq!(status, 202, "{reply}");
        }
    }
    latencies
        .into_iter()
        .map(|mut l| {
            l.sort();
            let mean = l.iter().sum::<Duration>() / samples.max(1) as u32;
            (percentile(&l, 0.5), percentile(&l, 0.99), mean)
        })
        .collect()
}

/// Writes `table` under `heading` to stdout and into `out`.
fn section(out: &mut String, heading: &str, header: &str, rows: &[String]) {
    let columns = header.matches('|').count() - 1;
    let text = format!("\n## {heading}\n\n{header}\n|{}\n{}\n", "---|".repeat(columns), rows.join("\n"));
    println!("{text}");
    out.push_str(&text);
}

async fn run() {
    let secs: u64 = env("BENCH_SECS", "10").parse().expect("BENCH_SECS");
    let clients: Vec<usize> = env("BENCH_CLIENTS", "8,32,128").split(',').map(|c| c.trim().parse().expect("BENCH_CLIENTS")).collect();
    let events: usize = env("BENCH_EVENTS", "1000000").parse().expect("BENCH_EVENTS");
    let samples: usize = env("BENCH_SAMPLES", "300").parse().expect("BENCH_SAMPLES");
    let tenants_n: usize = env("BENCH_TENANTS", "16").parse().expect("BENCH_TENANTS");
    let db = format!("sl_bench_{}", uuid::Uuid::new_v4().simple());
    // TLS or not, the same for the server and pgbench (like with like): off by default, as a
    // deployment on a trusted local network would run it (see the README).
    let url = format!("{}/{db}?sslmode={}", e2e::server_url(), env("BENCH_SSLMODE", "disable"));
    let started = Instant::now();
    let server = Server::start(&url);
    eprintln!("server at {} (pid {}), database {db}", server.address, server.child.id());
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("the bench database");
    let http = Http {
        client: reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(300)).build().expect("a client"),
        base: server.address.clone(),
    };
    let mut out = format!(
        "# saas-ledger benchmark, {}\n\n`cargo bench -p e2e --bench ledger` — {secs} s per load measurement, {tenants_n} tenants, server and Postgres \
         on one {}-core machine; raw Postgres measured in the same run. Ratios are what to compare across runs.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // A plan whose limits stay out of the way of a load test.
    let plan = json!({"code": "bench", "name": "Bench", "monthly_price": "1.00", "limits": {}, "features": [], "rate_limit_per_minute": 1_000_000});
    let (status, reply) = http.post("/v1/plans", ADMIN, &plan).await;
    assert_eq!(status, 201, "{reply}");
    let mut tenants = Vec::new();
    for i in 0..tenants_n {
        tenants.push(http.sign_up(&format!("bench-{i}"), 4).await);
    }
    let tenants = Arc::new(tenants);
    // The raw comparison: a table shaped like `events` (same columns, keys and generated column),
    // without our triggers.
    sqlx::query("CREATE TABLE bench_events (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)")
        .execute(&pool)
        .await
        .expect("the raw table");
    let run = uuid::Uuid::now_v7().simple().to_string();

    // 1. Commands (`BENCH_COMMANDS`: which of usage, bookings and batch; all by default).
    let commands = env("BENCH_COMMANDS", "usage,wrk,bookings,batch");
    let runs = |name: &str| commands.split(',').any(|c| c.trim() == name);
    let mut rows = Vec::new();
    // Warm-up, not measured: the server's pool opens its connections and each connection
    // prepares its statements on first use (pgbench's figures likewise leave out connecting).
    {
        let (http2, tenants2, run2) = (http.clone(), tenants.clone(), run.clone());
        load(32, 2, move |n| {
            let tenant = &tenants2[n as usize % tenants2.len()];
            let (http, key) = (http2.clone(), tenant.key.clone());
            let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{run2}-warm-{n}")});
            async move { http.post("/v1/usage", &key, &body).await.0 == 202 }
        })
        .await;
    }
    let metrics_before = http.metrics().await;
    for &c in clients.iter().filter(|_| runs("usage")) {
        let (http2, tenants2, run2) = (http.clone(), tenants.clone(), run.clone());
        let (ours, tps) = against_pgbench(&url, EVENT_ROW, c, secs, move |n| {
            let tenant = &tenants2[n as usize % tenants2.len()];
            let (http, key) = (http2.clone(), tenant.key.clone());
            let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{run2}-{c}-{n}")});
            async move { http.post("/v1/usage", &key, &body).await.0 == 202 }
        })
        .await;
        rows.push(ours.row_against("`POST /v1/usage`", c, tps));
        eprintln!("{}", rows.last().expect("a row"));
    }
    let metrics_after = http.metrics().await;
    // The same by an external load generator (issue 31), when `wrk` is installed.
    if runs("wrk") && wrk::available() {
        let keys: Vec<String> = tenants.iter().map(|t| t.key.clone()).collect();
        for &c in &clients {
            rows.push(wrk::row("`POST /v1/usage`", c, wrk::usage(&server.address, &url, &keys, &run, c, secs)));
            eprintln!("{}", rows.last().expect("a row"));
        }
    }
    for &c in clients.iter().filter(|_| runs("bookings")) {
        settled(&pool).await;
        let (http2, tenants2) = (http.clone(), tenants.clone());
        let base = c as i64 * 1_000_000;
        let (ours, tps) = against_pgbench(&url, EVENT_ROW, c, secs, move |n| {
            let tenant = &tenants2[n as usize % tenants2.len()];
            let room = tenant.rooms[(n as usize / tenants2.len()) % tenant.rooms.len()].clone();
            let (http, key) = (http2.clone(), tenant.key.clone());
            // A distinct 10-minute slot for every request.
            let start = chrono::DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z").expect("a date") + chrono::Duration::minutes((base + n as i64) * 10);
            let body = json!({"resource_id": room, "starts_at": start.to_rfc3339(), "ends_at": (start + chrono::Duration::minutes(5)).to_rfc3339(),
                              "customer": {"name": "Bench", "email": "bench@example.com"}});
            async move {
                let (status, reply) = http.post("/v1/bookings", &key, &body).await;
                if status != 201 {
                    eprintln!("refused booking: {status} {reply}");
                }
                status == 201
            }
        })
        .await;
        rows.push(ours.row_against("`POST /v1/bookings`", c, tps));
        eprintln!("{}", rows.last().expect("a row"));
    }
    // Bookings by the external load generator too (the figure issue 31 asks for).
    if runs("wrk") && runs("bookings") && wrk::available() {
        let keys: Vec<String> = tenants.iter().map(|t| t.key.clone()).collect();
        let rooms: Vec<Vec<String>> = tenants.iter().map(|t| t.rooms.clone()).collect();
        for &c in &clients {
            settled(&pool).await;
            rows.push(wrk::row("`POST /v1/bookings`", c, wrk::bookings(&server.address, &url, &keys, &rooms, c, secs)));
            eprintln!("{}", rows.last().expect("a row"));
        }
    }
    let bookings_after = http.metrics().await;
    if runs("batch") {
        let (http2, tenants2, run2) = (http.clone(), tenants.clone(), run.clone());
        let (ours, tps) = against_pgbench(&url, EVENT_ROWS_1000, 8, secs, move |n| {
            let tenant = &tenants2[n as usize % tenants2.len()];
            let (http, key) = (http2.clone(), tenant.key.clone());
            let records: Vec<Value> =
                (0..1000).map(|i| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("{run2}-b{n}-{i}")})).collect();
            async move { http.post("/v1/usage/batch", &key, &json!({ "records": records })).await.0 == 202 }
        })
        .await;
        let rows_per_second = tps * 1000.0;
        rows.push(format!(
            "| `POST /v1/usage/batch` (1,000 facts), 8 clients | {:.0} facts/s | {} | {} | {rows_per_second:.0} rows/s (1,000-row INSERTs, 8 clients) | **{:.2}** | {} |",
            ours.per_second * 1000.0,
            ms(ours.p50),
            ms(ours.p99),
            ours.per_second * 1000.0 / rows_per_second,
            ours.failures
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    // 3. Quota reads, once the read models have caught up with the writes above (commands no
    // longer wait for them; how long that took is reported).
    let catching_up = Instant::now();
    settled(&pool).await;
    let caught_up = catching_up.elapsed();
    rows.push(format!("| read models catching up after the command phases | {} | | | | | |", ms(caught_up)));
    {
        let (http2, tenants2) = (http.clone(), tenants.clone());
        let ours = load(32, secs, move |n| {
            let (http, key) = (http2.clone(), tenants2[n as usize % tenants2.len()].key.clone());
            async move { http.get("/v1/quota/api_calls", &key).await.0 == 200 }
        })
        .await;
        rows.push(format!(
            "| `GET /v1/quota/api_calls`, 32 clients | {:.0} req/s | {} | {} | | | {} |",
            ours.per_second,
            ms(ours.p50),
            ms(ours.p99),
            ours.failures
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    section(&mut out, "Commands and quota reads", "| what | ours | p50 | p99 | raw Postgres, same run | ratio | failed |", &rows);
    let mut peaks = vec![("the command and quota phases", server.peak_rss_mib())];

    // 2. Where a usage command's time went (all the usage phases above).
    let (b, a) = (&metrics_before, &metrics_after);
    let (request, requests) = mean_ms(b, a, "saas_ledger_http_request_duration_seconds", &["route=\"/v1/usage\"", "method=\"POST\""]);
    let (command, _) = mean_ms(b, a, "saas_ledger_command_duration_seconds", &["aggregate=\"Usage\""]);
    let (settle, _) = mean_ms(b, a, "saas_ledger_settle_duration_seconds", &[]);
    let (round, rounds) = mean_ms(b, a, "saas_ledger_sequencer_round_seconds", &[]);
    let numbered = total(a, "saas_ledger_sequencer_round_events_sum", &[]) - total(b, "saas_ledger_sequencer_round_events_sum", &[]);
    let mut split = vec![
        format!("| HTTP request `POST /v1/usage` (mean of {requests:.0}) | {request:.1} ms | |"),
        format!("| command: decide, append and commit (waiting for its group commit) | {command:.1} ms | |"),
        format!("| settle: waiting for the read models (usage no longer does) | {settle:.1} ms | |"),
        format!("| the rest: routing, auth, rate limit, JSON | {:.1} ms | |", request - command - settle),
        format!(
            "| sequencer round (events inserted other than by the writer) | {round:.1} ms | {:.1} events per round ({rounds:.0} rounds) |",
            numbered / rounds.max(1.0)
        ),
    ];
    let (flush, flushes) = mean_ms(b, a, "saas_ledger_append_flush_seconds", &[]);
    let shared = total(a, "saas_ledger_append_flush_commands_sum", &[]) - total(b, "saas_ledger_append_flush_commands_sum", &[]);
    split.push(format!(
        "| group-commit append (one statement and commit) | {flush:.1} ms | {:.1} commands per append ({flushes:.0} appends) |",
        shared / flushes.max(1.0)
    ));
    for name in projections::all().iter().map(|p| p.name()) {
        let label = format!("projection=\"{name}\"");
        let (batch, batches) = mean_ms(b, a, "saas_ledger_projection_batch_seconds", &[&label]);
        let applied = total(a, "saas_ledger_projection_batch_positions_sum", &[&label])
            - total(b, "saas_ledger_projection_batch_positions_sum", &[&label]);
        split.push(format!(
            "| projector batch `{name}` | {batch:.1} ms | {:.1} positions per batch ({batches:.0} batches) |",
            applied / batches.max(1.0)
        ));
    }
    section(&mut out, "Where a usage command's time goes (server's /metrics over the usage phases)", "| part | mean | |", &split);
    let (b, a) = (&metrics_after, &bookings_after);
    let (request, requests) = mean_ms(b, a, "saas_ledger_http_request_duration_seconds", &["route=\"/v1/bookings\"", "method=\"POST\""]);
    let (command, _) = mean_ms(b, a, "saas_ledger_command_duration_seconds", &["aggregate=\"Booking\""]);
    let (flush, flushes) = mean_ms(b, a, "saas_ledger_append_flush_seconds", &[]);
    let shared = total(a, "saas_ledger_append_flush_commands_sum", &[]) - total(b, "saas_ledger_append_flush_commands_sum", &[]);
    let split = vec![
        format!("| HTTP request `POST /v1/bookings` (mean of {requests:.0}) | {request:.1} ms | |"),
        format!("| command: decide, append and commit (waiting for its group commit) | {command:.1} ms | |"),
        format!("| the rest: auth, the resource, the plan's limits and the tenant's key (reads), JSON | {:.1} ms | |", request - command),
        format!(
            "| group-commit append (one statement and commit) | {flush:.1} ms | {:.1} commands per append ({flushes:.0} appends) |",
            shared / flushes.max(1.0)
        ),
    ];
    section(&mut out, "Where a booking's time goes (server's /metrics over the booking phases)", "| part | mean | |", &split);
    if env("BENCH_ONLY", "") == "commands" {
        // The command phases alone, for a quick comparison (nothing is written to bench/results).
        println!("{out}");
        drop(server);
        pool.close().await;
        drop_unless_kept(&db).await;
        return;
    }

    // 4. Flat cost.
    let flat = http.sign_up("bench-flat", 0).await;
    seed(&pool, &flat.id, "small", 1_000).await;
    settled(&pool).await;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
    // Both measurements start with nothing left to write back (a checkpoint), so that the
    // bulk load's write-back does not land on one of them: on this machine a commit's flush
    // is most of a sequential request.
    sqlx::query("CHECKPOINT").execute(&pool).await.expect("a checkpoint");
    let small = sequential(&http, &flat.key, "small", samples).await;
    let seeding = Instant::now();
    seed(&pool, &flat.id, "large", events).await;
    let inserted = seeding.elapsed();
    let head = settled(&pool).await;
    let projected = seeding.elapsed() - inserted;
    // A real history accumulates over months with autovacuum running; a bulk load in seconds is
    // vacuumed once so that the measurement sees that steady state, not the load's dead rows.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
    sqlx::query("CHECKPOINT").execute(&pool).await.expect("a checkpoint");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE tenant_id = $1::uuid")
        .bind(&flat.id)
        .fetch_one(&pool)
        .await
        .expect("a count");
    // The same small history on a second tenant, measured in turns with the large one: the
    // two measurements then share the machine's moment, which the one before the load cannot.
    let twin = http.sign_up("bench-flat-twin", 0).await;
    seed(&pool, &twin.id, "small", 1_000).await;
    settled(&pool).await;
    sqlx::query("CHECKPOINT").execute(&pool).await.expect("a checkpoint");
    let turns = alternating(&http, &[(&twin.key, "twin"), (&flat.key, "large")], samples).await;
    let (twin_small, large) = (turns[0], turns[1]);
    let ratio = |a: (Duration, Duration, Duration), b: (Duration, Duration, Duration)| {
        format!(
            "**{:.2}** | {:.2} | **{:.2}**",
            a.0.as_secs_f64() / b.0.as_secs_f64(),
            a.1.as_secs_f64() / b.1.as_secs_f64(),
            a.2.as_secs_f64() / b.2.as_secs_f64()
        )
    };
    section(
        &mut out,
        "Flat cost: `POST /v1/usage` by one tenant, sequential",
        "| history of the tenant | p50 | p99 | mean |",
        &[
            format!("| ~1k events, before the large history was loaded | {} | {} | {} |", ms(small.0), ms(small.1), ms(small.2)),
            format!(
                "| ~1k events (a second tenant), in turns with the next row | {} | {} | {} |",
                ms(twin_small.0),
                ms(twin_small.1),
                ms(twin_small.2)
            ),
            format!("| {history} events, in turns with the row above | {} | {} | {} |", ms(large.0), ms(large.1), ms(large.2)),
            format!("| **ratio**: {history} vs ~1k events, in turns (the same moment) | {} |", ratio(large, twin_small)),
            format!("| ratio: {history} vs ~1k events before the load (minutes apart) | {} |", ratio(large, small)),
        ],
    );

    peaks.push(("the flat-cost phase (1M events appended and projected live)", server.peak_rss_mib()));
    // 5. Rebuild and replay of the whole log, next to COPY.
    let head = head.max(settled(&pool).await);
    let copy_started = Instant::now();
    let mut conn = pool.acquire().await.expect("a connection");
    let mut copy = conn
        .copy_out_raw(
            "COPY (SELECT position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
                   FROM events ORDER BY position) TO STDOUT",
        )
        .await
        .expect("COPY");
    let mut copied_bytes = 0usize;
    while let Some(chunk) = copy.next().await {
        copied_bytes += chunk.expect("a chunk").len();
    }
    drop(copy);
    drop(conn);
    let copied = copy_started.elapsed();
    let rate = |d: Duration| head as f64 / d.as_secs_f64();
    let mut rows = vec![format!(
        "| `COPY (SELECT .. FROM events ORDER BY position) TO STDOUT` ({} MB) | {:.1} s | {:.0} | 1.00 |",
        copied_bytes / 1_000_000,
        copied.as_secs_f64(),
        rate(copied)
    )];
    rows.push(format!(
        "| live: {events} appended in SQL in one transaction ({:.1} s, numbered as the writer does), then applied by every projection | {:.1} s | {:.0} | {:.2} |",
        inserted.as_secs_f64(),
        projected.as_secs_f64(),
        events as f64 / projected.as_secs_f64(),
        events as f64 / projected.as_secs_f64() / rate(copied)
    ));
    for name in projections::all().iter().map(|p| p.name()) {
        let started = Instant::now();
        let (status, reply) = http.post(&format!("/v1/admin/projections/{name}/rebuild"), ADMIN, &json!({})).await;
        assert!(status == 202 || status == 200, "{status} {reply}");
        loop {
            let (_, runs) = http.get("/v1/admin/projections", ADMIN).await;
            let runs: Vec<&Value> = runs.as_array().map(|r| r.iter().filter(|r| r["name"] == name).collect()).unwrap_or_default();
            if runs.len() == 1 && runs[0]["status"] == "live" && runs[0]["generation"].as_i64() > Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = started.elapsed();
        rows.push(format!(
            "| rebuild `{name}` from 0 and swap in | {:.1} s | {:.0} | {:.2} |",
            took.as_secs_f64(),
            rate(took),
            rate(took) / rate(copied)
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    peaks.push(("the rebuilds", server.peak_rss_mib()));
    let replay_started = Instant::now();
    let (mut after, mut lines) = (0i64, 0usize);
    loop {
        let text = http
            .client
            .get(format!("{}/v1/events?after={after}&limit=10000", http.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("a page")
            .text()
            .await
            .expect("NDJSON");
        let Some(last) = text.lines().last() else { break };
        lines += text.lines().count();
        after = serde_json::from_str::<Value>(last).expect("an event")["position"].as_i64().expect("a position");
    }
    let replayed = replay_started.elapsed();
    rows.push(format!(
        "| NDJSON replay over HTTP, `GET /v1/events` pages of 10,000 ({lines} events) | {:.1} s | {:.0} | {:.2} |",
        replayed.as_secs_f64(),
        lines as f64 / replayed.as_secs_f64(),
        lines as f64 / replayed.as_secs_f64() / rate(copied)
    ));
    section(&mut out, &format!("Rebuild and replay of the whole log ({head} events)"), "| what | time | events/s | vs COPY |", &rows);

    // 7. Revenue analytics over a platform's worth of subscriptions.
    let revenue_tenants: usize = env("BENCH_REVENUE_TENANTS", "10000").parse().expect("BENCH_REVENUE_TENANTS");
    let seeding = Instant::now();
    let seeded = seed_revenue(&pool, revenue_tenants, 36).await;
    settled(&pool).await;
    let projected = seeding.elapsed();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
    let (_, months) = http.get("/v1/admin/analytics/revenue", ADMIN).await;
    let months = months.as_array().map_or(0, Vec::len);
    let mut rows = vec![format!(
        "| {revenue_tenants} subscriptions over 36 months ({seeded} events) appended in SQL, projected | {:.1} s | | | |",
        projected.as_secs_f64()
    )];
    for (what, path) in [
        ("`GET /v1/admin/analytics/revenue` (every month)", "/v1/admin/analytics/revenue".to_owned()),
        (
            "`GET /v1/admin/analytics/revenue?from&to` (the last 12 months)",
            format!(
                "/v1/admin/analytics/revenue?from={}&to={}",
                (chrono::Utc::now() - chrono::Duration::days(365)).format("%Y-%m-01T00:00:00Z"),
                chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
    ] {
        let http2 = http.clone();
        let path = Arc::new(path);
        let ours = load(8, secs, move |_| {
            let (http, path) = (http2.clone(), path.clone());
            async move { http.get(&path, ADMIN).await.0 == 200 }
        })
        .await;
        rows.push(format!(
            "| {what}, 8 clients | {:.0} req/s | {} | **{}** | {} |",
            ours.per_second,
            ms(ours.p50),
            ms(ours.p99),
            ours.failures
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    section(&mut out, &format!("Revenue analytics ({months} months answered)"), "| what | ours | p50 | p99 | failed |", &rows);
    peaks.push(("the revenue analytics phase", server.peak_rss_mib()));

    // 8. Price simulation, on its own server and database.
    simulation_phase(&mut out).await;
    billing_day::phase(&mut out).await;
    replicas::phase(&mut out).await;

    // 6. Memory.
    let rss = server.peak_rss_mib();
    peaks.push(("the NDJSON replay", rss));
    let mut memory: Vec<String> =
        peaks.iter().map(|(after, mib)| format!("| peak RSS (`VmHWM`) by the end of {after} | {mib:.0} MiB |")).collect();
    memory.push(format!("| server process peak RSS (`VmHWM`) over the whole run | {rss:.0} MiB |"));
    section(&mut out, "Memory", "| what | |", &memory);
    out.push_str(&format!("\nWhole run: {:.0} s.\n", started.elapsed().as_secs_f64()));

    drop(server);
    pool.close().await;
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir).expect("the results folder");
    std::fs::write(dir.join(format!("{date}.md")), &out).expect("the results file");
    println!("written to bench/results/{date}.md");
    drop_unless_kept(&db).await;
}

/// Drops the run's database `db`, unless `BENCH_KEEP_DB` is set (then says which it kept).
async fn drop_unless_kept(db: &str) {
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        eprintln!("kept database {db}");
        return;
    }
    if let Ok(admin) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", e2e::server_url())).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await;
    }
}

/// Phase 8: `BENCH_SIM_TENANTS` tenants × 12 months of billing history, then a simulation of it
/// with the real catalog (identity: every difference 0.00) and with starter at 39.00.
async fn simulation_phase(out: &mut String) {
    let tenants: usize = env("BENCH_SIM_TENANTS", "10000").parse().expect("BENCH_SIM_TENANTS");
    if tenants == 0 {
        return;
    }
    let db = format!("sl_bench_sim_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{db}?sslmode={}", e2e::server_url(), env("BENCH_SSLMODE", "disable"));
    let server = Server::start(&url);
    eprintln!("simulation server at {} (pid {}), database {db}", server.address, server.child.id());
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("the simulation database");
    let http = Http {
        client: reqwest::Client::builder().timeout(Duration::from_secs(300)).build().expect("a client"),
        base: server.address.clone(),
    };
    let seeding = Instant::now();
    let (events, invoices, origin) = simulation::seed(&pool, tenants, 12).await;
    let seeded = seeding.elapsed();
    settled(&pool).await;
    let projected = seeding.elapsed();
    sqlx::query("VACUUM ANALYZE").execute(&pool).await.expect("vacuum");
    let mut rows = vec![format!(
        "| {tenants} tenants × 12 months made by the domain ({events} events, {invoices} invoices), appended in SQL | {:.1} s (projected after {:.1} s) | | | | |",
        seeded.as_secs_f64(),
        projected.as_secs_f64()
    )];
    let starter = json!({"code": "starter", "name": "Starter", "monthly_price": "39.00",
        "limits": {"users": 3, "bookings_per_month": 100, "events": 5, "tickets_per_event": 50, "storage_mb": 1024, "api_calls_per_month": 10000},
        "rate_limit_per_minute": 200});
    let to = chrono::Utc::now() + chrono::Duration::days(1);
    for (what, plans) in [("the real catalog (`plans: []`)", json!([])), ("starter at 39.00 instead of 29.00", json!([starter]))] {
        let started = Instant::now();
        let body = json!({"from": origin, "to": to, "plans": plans});
        let (status, reply) = http.post("/v1/admin/simulations", ADMIN, &body).await;
        assert_eq!(status, 202, "{reply}");
        let path = format!("/v1/admin/simulations/{}", reply["id"].as_str().expect("an id"));
        let result = loop {
            let (status, view) = http.get(&path, ADMIN).await;
            assert_eq!(status, 200, "{view}");
            match view["status"].as_str() {
                Some("done") => break view["result"].clone(),
                Some("running") => tokio::time::sleep(Duration::from_millis(100)).await,
                other => panic!("the simulation ended {other:?}: {view}"),
            }
        };
        let took = started.elapsed();
        let totals = &result["totals"];
        if plans.as_array().is_some_and(Vec::is_empty) {
            assert_eq!(totals["difference"], "0.00", "identity: {totals}");
            assert!(result["by_tenant"].as_array().expect("tenants").iter().all(|t| t["difference"] == "0.00"), "identity per tenant");
        }
        rows.push(format!(
            "| {what} | **{:.1} s** | {} | {} | {} → {} ({}) | {} |",
            took.as_secs_f64(),
            result["subscriptions"],
            result["invoices_actual"],
            totals["actual"].as_str().unwrap_or_default(),
            totals["simulated"].as_str().unwrap_or_default(),
            totals["difference"].as_str().unwrap_or_default(),
            result["refused_commands"]
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    rows.push(format!("| simulation server's peak RSS (`VmHWM`) | {:.0} MiB | | | | |", server.peak_rss_mib()));
    section(
        out,
        "Price simulation (goal: 10,000 tenants × 12 months in ≤ 60 s)",
        "| what | time | subscriptions | invoices | actual → simulated (difference) | refused |",
        &rows,
    );
    drop(server);
    pool.close().await;
    drop_unless_kept(&db).await;
}
