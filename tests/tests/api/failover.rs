//! Issue 32: a replicated Postgres (a primary and a synchronous hot standby, `deploy/pair.sh`,
//! on loopback ports of this machine) behind a multi-host `DATABASE_URL`. Under a flood of usage
//! the primary is killed (`pg_ctl stop -m immediate`) and the standby promoted by hand: every
//! acknowledged fact is on the new primary exactly once, writes succeed again within 15 s, no
//! answer is a 500 (503 `UNAVAILABLE` with `Retry-After` meanwhile), and the projections carry on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{spawn_app_at, TestApp};
use serde_json::json;

/// Two Postgres nodes of this test's own, removed when dropped.
struct Pair {
    dir: PathBuf,
    primary: u16,
    standby: u16,
}

impl Pair {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sl-pair-{}", uuid::Uuid::new_v4().simple()));
        let (primary, standby) = (free_port(), free_port());
        let pair = Self { dir, primary, standby };
        pair.run(&["start", &pair.primary.to_string(), &pair.standby.to_string()]);
        pair
    }

    fn run(&self, args: &[&str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/pair.sh");
        let (command, rest) = args.split_first().expect("a command");
        let status = Command::new("bash").arg(&script).arg(command).arg(&self.dir).args(rest).status().expect("deploy/pair.sh runs");
        assert!(status.success(), "deploy/pair.sh {args:?} failed");
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}", self.primary, self.standby)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/pair.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(&self.dir).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("an address").port()
}

/// What the clients saw, in order of time since the start of the flood.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<u16, usize>,
    /// Acknowledged keys.
    acknowledged: Vec<String>,
    /// (when, status) of every answer.
    timeline: Vec<(Duration, u16)>,
    other: Vec<String>,
}

/// Eight clients sending usage facts as fast as they are answered, each fact until it is
/// acknowledged (a client's retries, with the fact's own key), a tenant each.
struct Flood {
    started: Instant,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    tenants: Vec<e2e::TestTenant>,
}

impl Flood {
    async fn start(app: &TestApp) -> Self {
        // A tenant per client, on a plan whose rate limit the flood stays under.
        let mut tenants = Vec::new();
        for c in 0..8 {
            tenants.push(app.create_tenant_on(&format!("flood-{c}"), "enterprise").await);
        }
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut clients = Vec::new();
        for (c, tenant) in tenants.iter().enumerate() {
            let (client, address, key) = (app.client.clone(), app.address.clone(), tenant.key.clone());
            let (stop, seen) = (stop.clone(), seen.clone());
            clients.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let fact = format!("c{c}-{n}");
                    loop {
                        let status = send(&client, &address, &key, &fact, &seen).await;
                        {
                            let mut seen = seen.lock().unwrap();
                            *seen.statuses.entry(status).or_default() += 1;
                            seen.timeline.push((started.elapsed(), status));
                            if status == 202 {
                                seen.acknowledged.push(fact.clone());
                            }
                        }
                        if status == 202 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        Self { started, stop, seen, clients, tenants }
    }

    fn acknowledged(&self) -> usize {
        self.seen.lock().unwrap().acknowledged.len()
    }

    /// Answers with 202 since `since`.
    fn accepted_since(&self, since: Duration) -> usize {
        self.seen.lock().unwrap().timeline.iter().filter(|(at, s)| *at > since && *s == 202).count()
    }

    /// Stops the clients (each once its last fact is acknowledged) and tells what they saw.
    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        {
            let seen = self.seen.lock().unwrap();
            eprintln!("failover: before the last facts: statuses {:?}, {:?}", seen.statuses, &seen.other[..seen.other.len().min(3)]);
        }
        for client in self.clients {
            tokio::time::timeout(Duration::from_secs(60), client).await.expect("every client's last fact is acknowledged").unwrap();
        }
        Arc::try_unwrap(self.seen).ok().expect("the clients are done").into_inner().unwrap()
    }
}

/// One `POST /v1/usage` of `fact`; its status (0: no answer), anything outside the contract
/// noted in `seen`.
async fn send(client: &reqwest::Client, address: &str, key: &str, fact: &str, seen: &Mutex<Seen>) -> u16 {
    let reply = client
        .post(format!("{address}/v1/usage"))
        .bearer_auth(key)
        .json(&json!({"metric": "api_calls", "quantity": 1, "idempotency_key": fact}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    match reply {
        Ok(reply) => {
            let status = reply.status().as_u16();
            let retry_after = reply.headers().get("retry-after").is_some();
            let body: serde_json::Value = reply.json().await.unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            if status == 503 && (body["error"]["code"] != "UNAVAILABLE" || !retry_after) {
                seen.other.push(format!("503 without UNAVAILABLE and Retry-After: {body}"));
            }
            if status >= 500 && status != 503 {
                seen.other.push(format!("{status}: {body}"));
            }
            status
        }
        Err(e) => {
            seen.lock().unwrap().other.push(format!("no answer: {e}"));
            0
        }
    }
}

/// After a failover at `lost` (the primary gone) and `promoted` (the new one accepting
/// writes), with the flood `finished`: no answer outside the contract, writes again within
/// 15 s of the promotion, every acknowledged fact exactly once on the new primary `now`, and
/// the read models caught up on it (the quotas count every fact).
async fn check_failover(app: &TestApp, tenants: &[e2e::TestTenant], seen: Seen, lost: Duration, promoted: Duration, now: &str) {
    let first_503 = seen.timeline.iter().find(|(at, s)| *at > lost && *s == 503).map(|(at, _)| *at - lost);
    let first_ok = seen.timeline.iter().find(|(at, s)| *at > promoted && *s == 202).map(|(at, _)| *at - promoted);
    eprintln!(
        "failover: statuses {:?}; primary lost → first 503 {first_503:?}; new primary → first 202 {first_ok:?}; {} acknowledged",
        seen.statuses,
        seen.acknowledged.len()
    );
    assert!(seen.other.is_empty(), "answers outside the contract: {:?}", &seen.other[..seen.other.len().min(5)]);
    let first_ok = first_ok.expect("writes succeed again after the promotion");
    assert!(first_ok < Duration::from_secs(15), "writes resumed {first_ok:?} after the promotion");

    let pool = sqlx::PgPool::connect(now).await.expect("the new primary");
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT payload->>'idempotency_key', count(*) FROM events WHERE aggregate_type = 'Usage' GROUP BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let stored: BTreeMap<String, i64> = stored.into_iter().collect();
    let mut acknowledged = seen.acknowledged.clone();
    acknowledged.sort();
    acknowledged.dedup();
    assert_eq!(acknowledged.len(), seen.acknowledged.len(), "each fact is acknowledged once by its sender's loop");
    for key in &acknowledged {
        assert_eq!(stored.get(key), Some(&1), "acknowledged fact {key} is on the new primary exactly once");
    }
    assert_eq!(stored.len(), acknowledged.len(), "no fact beyond the acknowledged ones (each client sends until acknowledged)");
    for (c, tenant) in tenants.iter().enumerate() {
        let sent = acknowledged.iter().filter(|k| k.starts_with(&format!("c{c}-"))).count();
        let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
        assert_eq!(quota.expect(200)["used"].as_u64(), Some(sent as u64), "client {c}'s tenant");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_loss_of_the_primary_loses_no_acknowledged_fact_and_writes_resume_on_the_promoted_standby() {
    let pair = Pair::start();
    let app: TestApp = spawn_app_at(&pair.url("ledger"), |c| c.db_max_connections = 16).await;
    let flood = Flood::start(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(flood.acknowledged() > 50, "the flood runs before the kill ({} acknowledged)", flood.acknowledged());
    let lost = flood.started.elapsed();
    pair.run(&["kill", &pair.primary.to_string()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.run(&["promote", &pair.standby.to_string()]);
    let promoted = flood.started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(40);
    while flood.accepted_since(promoted) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tenants = flood.tenants.clone();
    let seen = flood.finish().await;
    check_failover(&app, &tenants, seen, lost, promoted, &format!("postgres://postgres@127.0.0.1:{}/ledger", pair.standby)).await;
}

/// The Patroni cluster of `deploy/patroni/` (etcd, two Postgres nodes in synchronous mode,
/// HAProxy), removed when dropped.
struct Patroni {
    dir: PathBuf,
    base: u16,
}

impl Patroni {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("sl-patroni-{}", uuid::Uuid::new_v4().simple()));
        // A block of 40 ports: etcd at base, base+1; Postgres base+11, +12; REST base+21, +22;
        // HAProxy base+30.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // A start that fails (a port another process holds, a standby slow to sync under the
        // whole suite's load) is stopped and tried again on other ports, with its output shown.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let nth = STARTED.fetch_add(1, Ordering::Relaxed);
            let base = 20_000 + ((std::process::id() + nth * 97) % 400) as u16 * 100;
            let cluster = Self { dir: dir.join(format!("try-{nth}")), base };
            let started = cluster.run(&["start", &base.to_string(), "2"]);
            if started.status.success() {
                return cluster;
            }
            let mut logs = String::new();
            for entry in std::fs::read_dir(&cluster.dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    logs.push_str(&format!("\n--- {}\n{}", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
                }
            }
            failures.push(format!(
                "base {base}: {}{}{logs}",
                String::from_utf8_lossy(&started.stdout),
                String::from_utf8_lossy(&started.stderr)
            ));
            drop(cluster);
        }
        panic!("the Patroni cluster did not start: {failures:#?}");
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/patroni/cluster.sh");
        let (command, rest) = args.split_first().expect("a command");
        Command::new("bash").arg(&script).arg(command).arg(&self.dir).args(rest).output().expect("deploy/patroni/cluster.sh runs")
    }

    /// The primary's Postgres port, if there is one now.
    fn primary(&self) -> Option<u16> {
        let out = self.run(&["primary"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_patroni_the_loss_of_the_primary_machine_loses_no_acknowledged_fact() {
    patroni_failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_haproxy_the_loss_of_the_primary_machine_loses_no_acknowledged_fact() {
    patroni_failover(true).await;
}

/// Under Patroni, the primary's machine is lost under a flood of usage; the server reaches the
/// database by the multi-host URL (and follows the primary itself), or by HAProxy's one address
/// (which follows Patroni's `GET /primary`).
async fn patroni_failover(through_haproxy: bool) {
    let cluster = Patroni::start();
    let (one, two) = (cluster.base + 11, cluster.base + 12);
    let url = if through_haproxy {
        format!("postgres://postgres@127.0.0.1:{}/ledger", cluster.base + 30)
    } else {
        format!("postgres://postgres@127.0.0.1:{one},127.0.0.1:{two}/ledger")
    };
    let app: TestApp = spawn_app_at(&url, |c| c.db_max_connections = 16).await;
    let old = cluster.primary().expect("a primary");
    let cluster_view = app.get("/v1/admin/cluster", e2e::ADMIN_TOKEN).await;
    let by = if through_haproxy { cluster.base + 30 } else { old };
    assert_eq!(cluster_view.expect(200)["primary"]["host"], format!("127.0.0.1:{by}"));

    let flood = Flood::start(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(flood.acknowledged() > 50, "the flood runs before the crash ({} acknowledged)", flood.acknowledged());
    // The primary's machine is lost: its Patroni and its Postgres die at once.
    let lost = flood.started.elapsed();
    assert!(cluster.run(&["crash", &old.to_string()]).status.success());
    // Patroni promotes the synchronous standby once the leader key expires.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new = loop {
        if let Some(port) = cluster.primary().filter(|p| *p != old) {
            break port;
        }
        assert!(Instant::now() < deadline, "Patroni promotes the standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let promoted = flood.started.elapsed();
    eprintln!("failover: Patroni promoted 127.0.0.1:{new} {:?} after the crash (haproxy: {through_haproxy})", promoted - lost);
    let deadline = Instant::now() + Duration::from_secs(40);
    while flood.accepted_since(promoted) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tenants = flood.tenants.clone();
    let seen = flood.finish().await;
    check_failover(&app, &tenants, seen, lost, promoted, &format!("postgres://postgres@127.0.0.1:{new}/ledger")).await;
    if !through_haproxy {
        let cluster_view = app.get("/v1/admin/cluster", e2e::ADMIN_TOKEN).await;
        let cluster_view = cluster_view.expect(200);
        assert_eq!(cluster_view["primary"]["host"], format!("127.0.0.1:{new}"));
        assert_eq!(cluster_view["primary"]["failovers"], 1);
    }
}

/// `saas_ledger_reads_total{source="replica"}` in `/metrics`.
async fn replica_reads(app: &TestApp) -> u64 {
    let metrics = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("saas_ledger_reads_total") && l.contains("source=\"replica\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_served_by_a_replica_are_never_staler_than_the_primary_and_a_stopped_replica_is_skipped() {
    let pair = Pair::start();
    let replica = format!("postgres://postgres@127.0.0.1:{}/ledger", pair.standby);
    let primary = format!("postgres://postgres@127.0.0.1:{}/ledger", pair.primary);
    let app: TestApp = spawn_app_at(&primary, |c| c.replica_urls = vec![replica.clone()]).await;
    let tenant = app.create_tenant_on("replicated", "enterprise").await;
    let other = app.create_tenant_on("elsewhere", "enterprise").await;

    // The replica is seen, caught up.
    let mut caught_up = false;
    for _ in 0..100 {
        let cluster = app.get("/v1/admin/cluster", e2e::ADMIN_TOKEN).await;
        let cluster = cluster.expect(200);
        assert_eq!(cluster["primary"]["host"], format!("127.0.0.1:{}", pair.primary));
        assert_eq!(cluster["replicas"][0]["host"], format!("127.0.0.1:{}", pair.standby));
        if cluster["replicas"][0]["reachable"] == true && cluster["replicas"][0]["lag_bytes"] == 0 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the replica is reachable and caught up");

    // A write, then a read at once (the replica is not known to have it: the primary answers)
    // or a moment later (the replica has it): each answer counts every fact so far.
    let before = replica_reads(&app).await;
    for i in 1..=20u64 {
        let reply =
            app.post("/v1/usage", &tenant.key, json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("r-{i}")})).await;
        reply.expect(202);
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
        assert_eq!(quota.expect(200)["used"].as_u64(), Some(i), "read {i} reflects every fact before it");
        // A read model's list, through the read side's handle.
        let room = app.create_resource(&tenant.key, "room", 1).await;
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let listed = app.get("/v1/resources", &tenant.key).await;
        let listed = listed.expect(200);
        let rows = listed["data"].as_array().or_else(|| listed.as_array()).expect("a list").clone();
        assert!(rows.iter().any(|r| r["id"] == room.as_str()), "read {i} lists the room just created");
        assert_eq!(rows.len() as u64, i);
    }
    let served = replica_reads(&app).await - before;
    assert!(served >= 10, "the replica served the reads that came a moment after the writes ({served})");

    // Another tenant's write, named by its Ledger-Position: the read reflects it.
    let written = app.post("/v1/usage", &other.key, json!({"metric": "api_calls", "quantity": 5, "idempotency_key": "o-1"})).await;
    let position = written.headers["ledger-position"].to_str().unwrap().to_owned();
    let read = app
        .send(app.request(reqwest::Method::GET, "/v1/admin/projections", Some(e2e::ADMIN_TOKEN)).header("Ledger-Position", &position))
        .await;
    let read_position: i64 = read.headers["ledger-position"].to_str().unwrap().parse().unwrap();
    assert!(read_position >= position.parse::<i64>().unwrap());
    read.expect(200);

    // The replica stops: reads are served by the primary, without an error, and the cluster view
    // says so. (Only reads from here: the primary waits for its synchronous standby to commit.)
    pair.run(&["kill", &pair.standby.to_string()]);
    for _ in 0..20 {
        let quota = app.get("/v1/quota/api_calls", &tenant.key).await;
        assert_eq!(quota.expect(200)["used"].as_u64(), Some(20));
        let listed = app.get("/v1/resources", &tenant.key).await;
        listed.expect(200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cluster = app.get("/v1/admin/cluster", e2e::ADMIN_TOKEN).await;
    assert_eq!(cluster.expect(200)["replicas"][0]["reachable"], false);
}
