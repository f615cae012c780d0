//! Two server processes on one database behave as one system: the booking race and
//! the quota race hold across them, one is killed mid-run, the survivor takes over every
//! projection, and every read model ends equal to a fresh fold of the log.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{server_url, ADMIN_TOKEN};
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A server process, killed when dropped.
pub(crate) struct Instance {
    pub(crate) child: Child,
    pub(crate) url: String,
    id: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process: this test binary again, running only [`serve_child`], which builds and
/// serves the same `api::Application` that `saas-ledger serve` runs (building the real binary
/// from inside a test would recompile with another feature set, for minutes).
fn server_command() -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", "instances::serve_child", "--ignored", "--nocapture", "--test-threads", "1"]);
    command
}

/// Not a test: the body of a child server process (see [`server_command`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as a child server process of two_processes_on_one_database_..."]
async fn serve_child() {
    let Ok(database_url) = std::env::var("SL_CHILD_DATABASE_URL") else { return };
    let mut config = api::Config::for_database(&database_url);
    config.bind = std::env::var("SL_CHILD_BIND").unwrap();
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.db_max_connections = 12;
    if std::env::var("SL_CHILD_TEST_CLOCK").is_ok_and(|v| v == "1") {
        config.test_clock = true;
        config.billing_interval = Duration::from_secs(24 * 3600);
    }
    let app = api::Application::build(config).await.expect("the server starts");
    app.run_until(std::future::pending()).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) async fn start(database_url: &str, client: &reqwest::Client) -> Instance {
    start_with(database_url, client, &[]).await
}

/// [`start`] with more environment for the child: `SL_CHILD_TEST_CLOCK=1` runs it on the test
/// clock (without billing by itself: the clock's moves and `POST /v1/admin/billing/run` bill).
pub(crate) async fn start_with(database_url: &str, client: &reqwest::Client, env: &[(&str, &str)]) -> Instance {
    let port = free_port();
    let child = server_command()
        .envs(env.iter().copied())
        .env("SL_CHILD_DATABASE_URL", database_url)
        .env("SL_CHILD_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{url}/readyz")).send().await {
            if response.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health: Value = client.get(format!("{url}/healthz")).send().await.unwrap().json().await.unwrap();
    Instance { child, url, id: health["instance"].as_str().unwrap().to_owned() }
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> Option<(u16, Value)> {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

/// Every `rm` view's rows, in a stable order.
async fn models(pool: &PgPool) -> Value {
    let views: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.views WHERE table_schema = 'rm' ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut all = serde_json::Map::new();
    for view in views {
        let rows: Value = sqlx::query_scalar(&format!("SELECT coalesce(jsonb_agg(t ORDER BY t::text), '[]') FROM rm.{view} t"))
            .fetch_one(pool)
            .await
            .unwrap();
        all.insert(view, rows);
    }
    Value::Object(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_database_keep_every_invariant_and_the_survivor_takes_over() {
    let db_name = format!("sl_test_{}", uuid::Uuid::new_v4().simple());
    let database_url = format!("{}/{db_name}", server_url());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    // A starts first, so it leads every projection; it is the one that will be killed.
    let mut a = Some(start(&database_url, &client).await);
    let (a_url, a_id) = (a.as_ref().unwrap().url.clone(), a.as_ref().unwrap().id.clone());
    let b = start(&database_url, &client).await;
    let b_url = b.url.clone();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&database_url).await.unwrap();

    // A tenant (starter: 100 bookings a month) and a room, made through different instances.
    let (status, tenant) =
        call(&client, reqwest::Method::POST, format!("{a_url}/v1/tenants"), ADMIN_TOKEN, Some(e2e::TestApp::tenant_body("twin-clinic")))
            .await
            .unwrap();
    assert_eq!(status, 201, "{tenant}");
    let key = tenant["api_key"].as_str().unwrap().to_owned();
    let (status, room) = call(
        &client,
        reqwest::Method::POST,
        format!("{b_url}/v1/resources"),
        &key,
        Some(json!({"name": "Room 1", "kind": "room", "capacity": 1})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_owned();

    // The booking race, split across both instances: exactly one wins.
    let race = join_all((0..20).map(|i| {
        let url = if i % 2 == 0 { &a_url } else { &b_url };
        call(
            &client,
            reqwest::Method::POST,
            format!("{url}/v1/bookings"),
            &key,
            Some(json!({"resource_id": room, "starts_at": "2031-06-01T09:00:00Z", "ends_at": "2031-06-01T10:00:00Z",
                        "customer": {"name": "Ada", "email": "ada@example.com"}})),
        )
    }))
    .await;
    let statuses: Vec<u16> = race.iter().map(|r| r.as_ref().unwrap().0).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");

    // A leads every projection (B stands by).
    let (_, runs) = call(&client, reqwest::Method::GET, format!("{b_url}/v1/admin/projections"), ADMIN_TOKEN, None).await.unwrap();
    assert!(runs.as_array().unwrap().iter().all(|r| r["leader"] == a_id.as_str()), "{runs}");

    // The quota race across both, with the leader, A, killed in the middle of it.
    // B alone gets more than the 99 bookings left, so the month fills up whatever A managed.
    let sends = (0..160).map(|i| {
        let url = if i % 3 == 0 { a_url.clone() } else { b_url.clone() };
        let starts = chrono::DateTime::parse_from_rfc3339("2031-06-02T00:00:00Z").unwrap() + chrono::Duration::hours(i);
        let body = json!({"resource_id": room, "starts_at": starts.to_rfc3339(), "ends_at": (starts + chrono::Duration::minutes(30)).to_rfc3339(),
                          "customer": {"name": "Bo", "email": "bo@example.com"}});
        let client = client.clone();
        let key = key.clone();
        async move {
            tokio::time::sleep(Duration::from_millis((i as u64 % 80) * 3)).await;
            call(&client, reqwest::Method::POST, format!("{url}/v1/bookings"), &key, Some(body)).await
        }
    });
    let killer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(a.take()); // SIGKILL
    };
    let (replies, ()) = tokio::join!(join_all(sends), killer);
    let answered: Vec<&(u16, Value)> = replies.iter().flatten().collect();
    for (status, body) in &answered {
        assert!(matches!(status, 201 | 429), "{status} {body}");
        if *status == 429 {
            assert_eq!(body["error"]["code"], "QUOTA_EXCEEDED");
        }
    }
    assert!(answered.len() >= 106, "instance B answered everything sent to it ({} answers)", answered.len());
    assert!(answered.iter().any(|(s, _)| *s == 429), "the quota was reached");

    // Invariants, straight from the log: at most 100 confirmed bookings this month, none
    // overlapping, and the quota counter says the same.
    let confirmed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'BookingConfirmed' AND payload->>'starts_at' >= '2031-06-01' AND payload->>'starts_at' < '2031-07-01'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(confirmed, 100, "exactly the plan's 100 bookings a month were confirmed");
    let ok = answered.iter().filter(|(s, _)| *s == 201).count() as i64;
    assert!(ok < confirmed, "every 201 is a confirmed booking (one more came from the booking race)");

    // The survivor took over every projection.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, runs) = call(&client, reqwest::Method::GET, format!("{b_url}/v1/admin/projections"), ADMIN_TOKEN, None).await.unwrap();
        let runs = runs.as_array().unwrap().clone();
        if runs.iter().all(|r| r["leader"] == b.id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "instance B did not take over: {runs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Read-your-writes on the survivor, and the quota it reports matches the log.
    let (status, quota) = call(&client, reqwest::Method::GET, format!("{b_url}/v1/quota/bookings"), &key, None).await.unwrap();
    assert_eq!(status, 200, "{quota}");
    // (Bookings count in the month they are made, which is this one.)
    assert_eq!(quota["used"].as_i64(), Some(confirmed), "{quota}");
    assert_eq!(quota["remaining"].as_i64(), Some(0), "{quota}");

    // Every read model equals a fresh fold of the log.
    let wait_head = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, runs) = call(&client, reqwest::Method::GET, format!("{b_url}/v1/admin/projections"), ADMIN_TOKEN, None).await.unwrap();
            let runs = runs.as_array().unwrap().clone();
            if runs.iter().all(|r| r["lag"] == 0 && r["status"] == "live") {
                return runs;
            }
            assert!(Instant::now() < deadline, "projections did not catch up: {runs:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let before = wait_head.await;
    let live = models(&pool).await;
    let (status, _) =
        call(&client, reqwest::Method::POST, format!("{b_url}/v1/admin/projections/all/rebuild"), ADMIN_TOKEN, Some(json!({})))
            .await
            .unwrap();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, runs) = call(&client, reqwest::Method::GET, format!("{b_url}/v1/admin/projections"), ADMIN_TOKEN, None).await.unwrap();
        let runs = runs.as_array().unwrap().clone();
        let rebuilt = runs.iter().all(|r| {
            r["status"] == "live" && before.iter().any(|b| b["name"] == r["name"] && b["generation"].as_i64() < r["generation"].as_i64())
        });
        if rebuilt {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(models(&pool).await, live, "a read model differs from a fresh fold of the log");
    let confirmed_in_model: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rm.bookings WHERE status = 'confirmed'").fetch_one(&pool).await.unwrap();
    assert_eq!(confirmed_in_model, confirmed);

    drop(b);
    pool.close().await;
    let admin = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", server_url())).await.unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&admin).await;
}
