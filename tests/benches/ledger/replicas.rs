//! Phase 10 (issue 32): `GET /v1/quota/api_calls` at `BENCH_REPLICA_CLIENTS` (default 32)
//! clients over `BENCH_REPLICA_TENANTS` (default 200) tenants while one client keeps recording
//! usage (so that the quota answers kept per tenant keep going stale and reads reach the read
//! models), on a primary with a synchronous hot standby of this machine (`deploy/pair.sh`):
//! served by the primary alone, then by a server with the standby as its replica
//! (`SAAS_LEDGER_REPLICA_URLS`), one run, with the share of reads the replica took.
//! `BENCH_ONLY=replicas` runs this phase alone; `BENCH_REPLICA_TENANTS=0` skips it.

use super::*;

/// The pair of `deploy/pair.sh`, stopped and removed when dropped.
struct Pair {
    dir: std::path::PathBuf,
}

impl Pair {
    fn run(dir: &std::path::Path, args: &[&str]) {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/pair.sh");
        let status = Command::new("bash").arg(script).arg(args[0]).arg(dir).args(&args[1..]).status().expect("deploy/pair.sh runs");
        assert!(status.success(), "deploy/pair.sh {args:?}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        Self::run(&self.dir, &["stop"]);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("an address").port()
}

pub async fn phase(out: &mut String) {
    let tenants: usize = env("BENCH_REPLICA_TENANTS", "200").parse().expect("BENCH_REPLICA_TENANTS");
    if tenants == 0 {
        return;
    }
    let clients: usize = env("BENCH_REPLICA_CLIENTS", "32").parse().expect("BENCH_REPLICA_CLIENTS");
    let secs: u64 = env("BENCH_SECS", "10").parse().expect("BENCH_SECS");
    let dir = std::env::temp_dir().join(format!("sl-bench-pair-{}", uuid::Uuid::new_v4().simple()));
    let (primary, standby) = (free_port(), free_port());
    Pair::run(&dir, &["start", &primary.to_string(), &standby.to_string()]);
    let pair = Pair { dir };
    let url = format!("postgres://postgres@127.0.0.1:{primary}/ledger");
    let replica = format!("postgres://postgres@127.0.0.1:{standby}/ledger");
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(60)).build().expect("a client");

    // The tenants and their usage, through the first server.
    let mut keys = Vec::new();
    {
        let server = Server::start(&url);
        let http = Http { client: client.clone(), base: server.address.clone() };
        for i in 0..tenants {
            let body = json!({"code": format!("replica-{i}"), "name": format!("Replica {i}"), "business_type": "clinic", "timezone": "UTC",
                              "currency": "EUR", "locale": "de-CH", "billing_email": format!("billing@replica-{i}.example"),
                              "plan": "enterprise", "billing_period": "monthly", "trial_days": 0, "tax_rate": "8.1"});
            let (status, created) = http.post("/v1/tenants", ADMIN, &body).await;
            assert_eq!(status, 201, "{created}");
            let key = created["api_key"].as_str().expect("a key").to_owned();
            let records: Vec<Value> =
                (0..50).map(|n| json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("seed-{i}-{n}")})).collect();
            let (status, reply) = http.post("/v1/usage/batch", &key, &json!({"records": records})).await;
            assert!(status < 300, "{status} {reply}");
            keys.push(key);
        }
    }

    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for with_replica in [false, true] {
        let env = if with_replica { vec![("SL_BENCH_REPLICA_URLS", replica.clone())] } else { Vec::new() };
        let server = Server::start_with(&url, &env);
        let http = Http { client: client.clone(), base: server.address.clone() };
        if with_replica {
            // The replica seen and caught up before the measurement.
            for _ in 0..100 {
                let (_, cluster) = http.get("/v1/admin/cluster", ADMIN).await;
                if cluster["replicas"][0]["reachable"] == true && cluster["replicas"][0]["lag_bytes"] == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let before = http.metrics().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, keys, stop, reads, failed) = (http.clone(), keys.clone(), stop.clone(), reads.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    i = (i * 7 + 13) % keys.len();
                    let (status, _) = http.get("/v1/quota/api_calls", &keys[i]).await;
                    if status == 200 { &reads } else { &failed }.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        {
            let (http, keys, stop, writes) = (http.clone(), keys.clone(), stop.clone(), writes.clone());
            let tag = if with_replica { "r" } else { "p" };
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"metric": "api_calls", "quantity": 1, "idempotency_key": format!("load-{tag}-{n}")});
                    let (status, _) = http.post("/v1/usage", &keys[n % keys.len()], &body).await;
                    if status == 202 {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("a client");
        }
        let after = http.metrics().await;
        let delta = |source: &str| {
            total(&after, "saas_ledger_reads_total", &[&format!("source=\"{source}\"")])
                - total(&before, "saas_ledger_reads_total", &[&format!("source=\"{source}\"")])
        };
        let (by_replica, by_primary) = (delta("replica"), delta("primary"));
        let rate = reads.load(Ordering::Relaxed) as f64 / secs as f64;
        rates.push(rate);
        let share = if by_replica + by_primary > 0.0 { by_replica / (by_replica + by_primary) * 100.0 } else { 0.0 };
        rows.push(format!(
            "| {} | {clients} | **{rate:.0}/s** | {} | {:.0}/s | {by_replica:.0} / {by_primary:.0} ({share:.0} % by the replica) |",
            if with_replica { "primary + 1 replica (`SAAS_LEDGER_REPLICA_URLS`)" } else { "primary alone" },
            failed.load(Ordering::Relaxed),
            writes.load(Ordering::Relaxed) as f64 / secs as f64,
        ));
        eprintln!("{}", rows.last().expect("a row"));
    }
    rows.push(format!("| **ratio**: with the replica vs the primary alone | | **{:.2}** | | | |", rates[1] / rates[0]));
    drop(pair);
    section(
        out,
        &format!("Replica reads (issue 32): `GET /v1/quota/api_calls` over {tenants} tenants while one client records usage; primary and standby on this machine"),
        "| served by | clients | reads | failed | usage writes | reads that reached the read models: replica / primary |",
        &rows,
    );
}
