//! The end-to-end harness: [`spawn_app`] starts the real server on a free port against a
//! fresh Postgres database of its own, and [`TestApp`] offers typed helpers so that each test
//! reads like the scenario it proves. The database is dropped when the `TestApp` is.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The admin token every test server uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The Postgres server tests create their databases on (`TEST_DATABASE_URL` overrides it).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A running server and a way to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client without a default token.
    pub client: reqwest::Client,
    /// The test database's name.
    pub db_name: String,
    /// A pool on the test database, for looking behind the API.
    pub pool: PgPool,
    /// The application state (the command services, projections, ...).
    pub state: api::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Whether dropping this app drops its database (not for a second instance on it).
    owns_database: bool,
}

/// Starts the server on a fresh database.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the server on a fresh database, with the configuration adjusted by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut api::Config)) -> TestApp {
    init_test_log();
    let db_name = format!("sl_test_{}", Uuid::new_v4().simple());
    spawn_on(db_name, true, tweak).await
}

/// `TEST_LOG=warn cargo test ...` shows the servers' logs.
fn init_test_log() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    }
}

/// Starts another instance of the server on `app`'s database (two instances, one database);
/// dropping it leaves the database to `app`.
pub async fn spawn_instance_of(app: &TestApp) -> TestApp {
    spawn_on(app.db_name.clone(), false, |_| {}).await
}

/// [`spawn_instance_of`] with the configuration adjusted by `tweak`.
pub async fn spawn_instance_with(app: &TestApp, tweak: impl FnOnce(&mut api::Config)) -> TestApp {
    spawn_on(app.db_name.clone(), false, tweak).await
}

impl TestApp {
    /// Stops this instance (its HTTP server and every background job) and keeps the database:
    /// to the other instances, as if it had died. Requests to it fail from now on.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

/// Starts the server on the database at `url` (any form `DATABASE_URL` takes, several hosts
/// too), creating it if needed; dropping the app leaves the database alone.
pub async fn spawn_app_at(url: &str, tweak: impl FnOnce(&mut api::Config)) -> TestApp {
    init_test_log();
    let db_name = url.rsplit('/').next().unwrap_or_default().split('?').next().unwrap_or_default().to_owned();
    spawn_at(url.to_owned(), db_name, false, tweak).await
}

async fn spawn_on(db_name: String, owns_database: bool, tweak: impl FnOnce(&mut api::Config)) -> TestApp {
    let url = format!("{}/{db_name}", server_url());
    spawn_at(url, db_name, owns_database, tweak).await
}

async fn spawn_at(url: String, db_name: String, owns_database: bool, tweak: impl FnOnce(&mut api::Config)) -> TestApp {
    let mut config = api::Config::for_database(&url);
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.db_max_connections = 16;
    tweak(&mut config);
    let app = api::Application::build(config).await.expect("the application starts");
    let address = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let pool = state.pool().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(64).build().expect("a client");
    TestApp { address, client, db_name, pool, state, stop: Some(stop), server: Some(server), owns_database }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if !self.owns_database {
            return;
        }
        let db_name = self.db_name.clone();
        // Drop the database from a thread with its own runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                if let Ok(pool) =
                    sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&format!("{}/postgres", server_url())).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&pool).await;
                }
            });
        })
        .join();
    }
}

/// A response's status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`Null` if empty or not JSON).
    pub body: Value,
}

impl Reply {
    /// Reads a response.
    pub async fn from(response: Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self { status, headers, body }
    }

    /// The error code of a contract error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        &self.body
    }

    /// Asserts a contract error with this status and code.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.code(), code, "unexpected code; body: {}", self.body);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {}", self.body);
        assert!(self.body["error"]["details"].is_object(), "no details: {}", self.body);
    }
}

/// A tenant created through the API, with its owner key.
#[derive(Debug, Clone)]
pub struct TestTenant {
    /// Its id.
    pub id: Uuid,
    /// Its code.
    pub code: String,
    /// Its owner key.
    pub key: String,
}

impl TestApp {
    /// A request with `token` as bearer (if any).
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends `builder` and reads the reply.
    pub async fn send(&self, builder: RequestBuilder) -> Reply {
        Reply::from(builder.send().await.expect("the server answers")).await
    }

    /// `GET path` with `token`.
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(self.request(Method::GET, path, Some(token))).await
    }

    /// `POST path` with a JSON body and `token`.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(self.request(Method::POST, path, Some(token)).json(&body)).await
    }

    /// `PUT path` with a JSON body and `token`.
    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(self.request(Method::PUT, path, Some(token)).json(&body)).await
    }

    /// `DELETE path` with `token`.
    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(self.request(Method::DELETE, path, Some(token))).await
    }

    /// A valid sign-up body for `code`.
    pub fn tenant_body(code: &str) -> Value {
        json!({
            "code": code,
            "name": format!("Tenant {code}"),
            "business_type": "clinic",
            "timezone": "Europe/Zurich",
            "currency": "EUR",
            "locale": "de-CH",
            "billing_email": format!("billing@{code}.example"),
            "plan": "starter",
            "billing_period": "monthly",
            "trial_days": 14,
            "tax_rate": "8.1"
        })
    }

    /// `POST /v1/tenants` as the admin.
    pub async fn create_tenant_raw(&self, body: Value) -> Reply {
        self.post("/v1/tenants", ADMIN_TOKEN, body).await
    }

    /// Creates tenant `code` and returns it with its owner key.
    pub async fn create_tenant(&self, code: &str) -> TestTenant {
        self.create_tenant_from(Self::tenant_body(code)).await
    }

    /// Signs up the tenant `body` describes (expecting 201) and returns it with its owner key.
    pub async fn create_tenant_from(&self, body: Value) -> TestTenant {
        let code = body["code"].as_str().expect("a code").to_owned();
        let reply = self.create_tenant_raw(body).await;
        let created = reply.expect(201);
        TestTenant {
            id: created["id"].as_str().expect("an id").parse().expect("a uuid"),
            code,
            key: created["api_key"].as_str().expect("a key").to_owned(),
        }
    }

    /// Signs up `code` on `plan` without a trial (its first invoice is issued at once) at a tax
    /// rate of 10 %, round figures for asserting invoices to the cent.
    pub async fn create_billed_tenant(&self, code: &str, plan: &str) -> TestTenant {
        let mut body = Self::tenant_body(code);
        body["tax_rate"] = serde_json::json!("10");
        body["trial_days"] = serde_json::json!(0);
        body["plan"] = serde_json::json!(plan);
        self.create_tenant_from(body).await
    }

    /// The invoices `token` sees (up to 100), oldest first.
    pub async fn invoices(&self, token: &str) -> Vec<Value> {
        let reply = self.get("/v1/invoices?limit=100", token).await;
        let mut all: Vec<Value> = reply.expect(200)["data"].as_array().expect("a page").clone();
        all.reverse();
        all
    }

    /// Issues a key with `role` for the tenant of `token`; returns the secret.
    pub async fn issue_key(&self, token: &str, role: &str) -> String {
        let reply = self.post("/v1/api-keys", token, json!({"role": role, "name": format!("{role} key")})).await;
        reply.expect(201)["api_key"].as_str().expect("a secret").to_owned()
    }

    /// Appends `count` usage facts of `tenant_id` (`1 + i % 3` API calls each, keys `prefix` + i)
    /// straight into the log in SQL, one one-event stream each as `POST /v1/usage` appends
    /// them, numbered by the sequencer (as rows inserted other than by the writer are): for
    /// tests that need a long log quickly. Returns the head once they are numbered.
    pub async fn seed_usage(&self, tenant_id: &str, prefix: &str, count: usize) -> i64 {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT 'Usage', $1 || ':' || $3 || g, 1, 'UsageRecorded', '1.0',
                    jsonb_build_object('type', 'UsageRecorded', 'tenant_id', $1, 'metric', 'api_calls', 'kind', 'counter', 'quantity', 1 + g % 3,
                                       'idempotency_key', $3 || g, 'occurred_at', now(), 'recorded_at', now()),
                    jsonb_build_object('tenant_id', $1, 'actor', 'system:test', 'correlation_id', $3, 'causation_id', $3,
                                       'occurred_at', to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
             FROM generate_series(0, $2::bigint - 1) g",
        )
        .bind(tenant_id)
        .bind(count as i64)
        .bind(prefix)
        .execute(&self.pool)
        .await
        .expect("seeded usage");
        self.state.projections().drain_and_head().await.expect("the seeded events numbered")
    }

    /// Every event in the log, read through `GET /v1/events` as the admin.
    pub async fn all_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let response = self
                .request(Method::GET, &format!("/v1/events?after={after}&limit=10000"), Some(ADMIN_TOKEN))
                .send()
                .await
                .expect("events");
            assert_eq!(response.status(), 200);
            let text = response.text().await.expect("a body");
            let page: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("an NDJSON line")).collect();
            let Some(last) = page.last() else {
                return events;
            };
            after = last["position"].as_i64().expect("a position");
            events.extend(page);
        }
    }
}

/// The webhook secret test servers with webhooks use.
pub const WEBHOOK_SECRET: &str = "whsec_test";

/// The contract's `Payment-Signature` for `body` at unix time `t`.
pub fn payment_signature(body: &[u8], t: i64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl TestApp {
    /// Sends a signed payment notification.
    pub async fn payment_webhook(&self, body: Value) -> Reply {
        let raw = serde_json::to_vec(&body).expect("json");
        let signature = payment_signature(&raw, chrono::Utc::now().timestamp());
        self.send(
            self.request(Method::POST, "/v1/webhooks/payments", None)
                .header("Content-Type", "application/json")
                .header("Payment-Signature", signature)
                .body(raw),
        )
        .await
    }

    /// Moves the test clock to `now` (RFC 3339), which runs the billing cycle up to it.
    pub async fn set_clock(&self, now: &str) -> Value {
        self.put("/v1/admin/clock", ADMIN_TOKEN, json!({ "now": now })).await.expect(200).clone()
    }
}

impl TestApp {
    /// Creates tenant `code` on `plan` with no trial.
    pub async fn create_tenant_on(&self, code: &str, plan: &str) -> TestTenant {
        let mut body = Self::tenant_body(code);
        body["plan"] = json!(plan);
        body["trial_days"] = json!(0);
        self.create_tenant_from(body).await
    }

    /// Creates a resource and returns its id.
    pub async fn create_resource(&self, token: &str, kind: &str, capacity: u32) -> String {
        let reply = self
            .post(
                "/v1/resources",
                token,
                json!({"name": format!("{kind} {capacity}"), "kind": kind, "capacity": capacity, "timezone": "Europe/Zurich"}),
            )
            .await;
        reply.expect(201)["id"].as_str().expect("an id").to_owned()
    }

    /// `POST /v1/bookings` for `[starts_at, ends_at)`.
    pub async fn book(&self, token: &str, resource_id: &str, starts_at: &str, ends_at: &str, seats: u32) -> Reply {
        let body = json!({"resource_id": resource_id, "starts_at": starts_at, "ends_at": ends_at, "seats": seats, "customer": {"name": "Ada Lovelace", "email": "ada@example.com"}});
        self.post("/v1/bookings", token, body).await
    }
}
