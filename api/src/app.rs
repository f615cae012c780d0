//! The application: configuration in, a running server out. Builds the state once (pool,
//! clock, command services, projections) and the router with its middleware.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use commands::accounts::Accounts;
use commands::appender::Appender;
use commands::bookings::Bookings;
use commands::clock::{Clock, ManualClock, SystemClock};
use commands::members::Members;
use commands::plans::Plans;
use commands::store::CommitHook;
use commands::subscriptions::{PgUsageMeter, Subscriptions};
use commands::tenants::Tenants;
use commands::usage::Usage;
use commands::vault::Vault;
use commands::{db, Actor, AggregateStore, CommandContext, Committed};
use cqrs_es::Aggregate;
use projections::{EventLog, Projections, Sequencer};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::auth::TenantKey;
use crate::config::Config;
use crate::error::{ApiError, REQUEST_ID};
use crate::routes;

/// How long a command's response waits for the read models to include it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared, immutable application state (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    instance: String,
    pool: PgPool,
    config: Config,
    admin: crate::admin_token::AdminCredential,
    clock: Arc<dyn Clock>,
    manual_clock: Option<Arc<ManualClock>>,
    tenants: Arc<Tenants>,
    accounts: Accounts,
    usage: Usage,
    bookings: Bookings,
    members: Members,
    projections: Arc<Projections>,
    log: EventLog,
    keys: crate::auth::KeyCache,
    rate_limits: crate::rate_limit::RateLimits,
    quotas: crate::routes::quota::QuotaCache,
    sealer: projections::webhooks::Sealer,
}

impl AppState {
    /// The database pool (read-model queries).
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// This instance's id (its sessions' `application_name`).
    pub fn instance(&self) -> &str {
        &self.0.instance
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Whether `token` is the platform admin's (see [`crate::admin_token`]).
    pub async fn is_admin(&self, token: &str) -> Result<bool, ApiError> {
        Ok(self.0.admin.admits(token).await?)
    }

    /// The current instant, from the injected clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.clock.now()
    }

    /// The hand-moved clock, when `SAAS_LEDGER_TEST_CLOCK=1`.
    pub fn manual_clock(&self) -> Option<&ManualClock> {
        self.0.manual_clock.as_deref()
    }

    /// Seals and opens webhook endpoints' signing secrets.
    pub fn sealer(&self) -> &projections::webhooks::Sealer {
        &self.0.sealer
    }

    /// The non-public webhook targets allowed.
    pub fn webhook_allow(&self) -> &projections::webhooks::AllowList {
        &self.0.config.webhook_allow_hosts
    }

    /// Tenant commands.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.0.tenants
    }

    /// Plans, subscriptions, billing and payments (work spanning aggregates).
    pub fn accounts(&self) -> &Accounts {
        &self.0.accounts
    }

    /// The personal-data keys (crypto-shredding).
    pub fn vault(&self) -> &Vault {
        self.0.tenants.vault()
    }

    /// Resource and booking commands.
    pub fn bookings(&self) -> &Bookings {
        &self.0.bookings
    }

    /// Member (seat) commands.
    pub fn members(&self) -> &Members {
        &self.0.members
    }

    /// Usage commands.
    pub fn usage(&self) -> &Usage {
        &self.0.usage
    }

    /// Waits until every live read model has applied everything appended so far (used before
    /// and after work that reads many read models, such as the billing run).
    pub async fn settle_all(&self) {
        match self.0.projections.drain_and_head().await {
            Ok(head) => {
                if !self.0.projections.wait_for(head, SETTLE_TIMEOUT).await {
                    tracing::warn!(head, "read models did not reach the head in time");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not read the log head"),
        }
    }

    /// Runs the billing cycle as of `as_of` with read models settled before and after.
    /// Serialised across every instance by an advisory lock held on a connection of its own
    /// (closed, and so released, whatever happens to this future).
    pub async fn run_billing(&self, as_of: chrono::DateTime<chrono::Utc>) -> Result<commands::accounts::BillingReport, ApiError> {
        let mut lock = self.pool().acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)").bind(projections::leader::key("billing-run")).execute(&mut lock).await?;
        let report = self.run_billing_locked(as_of).await;
        let _ = sqlx::Connection::close(lock).await;
        report
    }

    async fn run_billing_locked(&self, as_of: chrono::DateTime<chrono::Utc>) -> Result<commands::accounts::BillingReport, ApiError> {
        self.settle_all().await;
        let correlation = REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| format!("billing-{}", Uuid::now_v7()));
        let report = self.0.accounts.run_billing(as_of, &correlation).await?;
        self.settle_all().await;
        Ok(report)
    }

    /// The projections.
    pub fn projections(&self) -> &Arc<Projections> {
        &self.0.projections
    }

    /// The global event log.
    pub fn log(&self) -> &EventLog {
        &self.0.log
    }

    /// The context for a command issued now by `actor` for `tenant_id`, correlated with the
    /// current request.
    pub fn context(&self, tenant_id: Option<Uuid>, actor: Actor) -> CommandContext {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| Uuid::now_v7().to_string());
        CommandContext { tenant_id, actor, causation_id: request_id.clone(), correlation_id: request_id, at: self.now(), command: None }
    }

    /// Waits until every live read model includes what `committed` appended to aggregate
    /// `aggregate_id`. Reads wait for their tenant's writes by themselves (see
    /// [`crate::consistency`]); this is for commands whose answer, or whose next step, reads
    /// read models (the answer of a sign-up, say), and those that change what other tenants'
    /// reads show. A read model that is stuck does not fail the command (it did commit): the
    /// wait gives up after a while and says so in the log.
    pub async fn settle<A: Aggregate>(&self, aggregate_id: &str, committed: &Committed<A>) {
        if let Some(position) = committed.position {
            let started = std::time::Instant::now();
            let settled = self.0.projections.wait_for(position, SETTLE_TIMEOUT).await;
            metrics::histogram!("saas_ledger_settle_duration_seconds").record(started.elapsed().as_secs_f64());
            if !settled {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id, position, "read models did not catch up with a command in time");
            }
        }
    }

    /// Runs `command` on subscription `id` (bringing its tenant's status in line) on a task of
    /// its own, then waits until every read model includes it and what it caused.
    pub async fn subscription_command(
        &self,
        id: Uuid,
        command: domain::subscription::SubscriptionCommand,
        context: commands::CommandContext,
    ) -> Result<commands::Committed<domain::subscription::Subscription>, ApiError> {
        let app = self.clone();
        self.detach(async move {
            let committed = app.accounts().subscription_command(id, command, &context).await?;
            app.settle_all().await;
            Ok(committed)
        })
        .await
    }

    /// Runs `work` to completion on its own task, so that a client hanging up cannot cancel
    /// it between the commit and what must follow it (read-model settling, idempotency records).
    pub async fn detach<T: Send + 'static>(&self, work: impl Future<Output = Result<T, ApiError>> + Send + 'static) -> Result<T, ApiError> {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        tokio::spawn(REQUEST_ID.scope(request_id, crate::consistency::carry(work))).await.map_err(ApiError::internal)?
    }

    /// Tenant `id`'s status, or `None` if there is no such tenant.
    pub async fn tenant_status(&self, id: Uuid) -> Result<Option<String>, ApiError> {
        Ok(sqlx::query_scalar("SELECT status FROM rm.tenants WHERE id = $1").bind(id).fetch_optional(self.pool()).await?)
    }

    /// The tenant a path segment or `X-Tenant-ID` names: its id, or its code (`acme-clinic`).
    /// An id is taken as it is (whether it exists is the caller's question, as before); a code
    /// is looked up, and an unknown one is 404 `NOT_FOUND`; anything else is 404 as well (no
    /// tenant can have that id or code).
    pub async fn resolve_tenant(&self, reference: &str) -> Result<Uuid, ApiError> {
        let reference = reference.trim();
        if let Ok(id) = reference.parse::<Uuid>() {
            return Ok(id);
        }
        if domain::values::TenantCode::parse(reference).is_err() {
            return Err(ApiError::not_found("tenant"));
        }
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM rm.tenants WHERE code = $1").bind(reference).fetch_optional(self.pool()).await?;
        id.ok_or_else(|| ApiError::not_found("tenant"))
    }

    /// Whether tenant `id` exists.
    pub async fn tenant_exists(&self, id: Uuid) -> Result<bool, ApiError> {
        Ok(self.tenant_status(id).await?.is_some())
    }

    /// This process's rate limiters.
    pub fn rate_limits(&self) -> &crate::rate_limit::RateLimits {
        &self.0.rate_limits
    }

    /// Quota answers by tenant (see [`crate::routes::quota::QuotaCache`]).
    pub fn quotas(&self) -> &crate::routes::quota::QuotaCache {
        &self.0.quotas
    }

    /// The API-key lookups this process reuses (see [`crate::auth::KeyCache`]).
    pub fn keys(&self) -> &crate::auth::KeyCache {
        &self.0.keys
    }

    /// The active key with this hash, with its tenant's status; a lookup younger than the
    /// configured `auth_cache` is reused.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<TenantKey>, ApiError> {
        if let Some(key) = self.0.keys.get(hash) {
            return Ok(Some(key));
        }
        let asked = std::time::Instant::now();
        let key = self.key_from_database(hash).await?;
        if let Some(key) = &key {
            self.0.keys.put(hash, key.clone(), asked);
        }
        Ok(key)
    }

    async fn key_from_database(&self, hash: &str) -> Result<Option<TenantKey>, ApiError> {
        Ok(sqlx::query_as(
            "SELECT k.id AS key_id, k.tenant_id, k.role, t.status AS tenant_status, p.rate_limit_per_minute
             FROM rm.api_keys k JOIN rm.tenants t ON t.id = k.tenant_id
             LEFT JOIN rm.subscriptions s ON s.tenant_id = k.tenant_id
             LEFT JOIN rm.plans p ON p.code = s.plan AND p.version = s.plan_version
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash)
        .fetch_optional(self.pool())
        .await?)
    }
}

/// A built application: state ready, port bound, background work running.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
    generated_admin_token: Option<String>,
}

impl Application {
    /// Creates the database if needed, migrates it, brings every read model up, starts the
    /// sequencer and projectors, and binds the listener.
    pub async fn build(config: Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        db::ensure_database(&config.database_url).await?;
        let instance = format!("saas-ledger-{}", &Uuid::now_v7().simple().to_string()[20..]);
        let pool = db::connect_as(&config.database_url, config.db_max_connections, &instance).await?;
        db::migrate(&pool).await?;

        let sequencer = Sequencer::new(pool.clone());
        let projections = Projections::new(pool.clone(), sequencer.clone(), projections::all());
        projections.prepare().await?;
        let shutdown = CancellationToken::new();
        let background = projections.start(shutdown.clone());

        // Every append of this process goes through one group-commit writer; a flush tells
        // the projectors here that the head moved, and each command reports its position to
        // its request (the `Ledger-Position` answer header).
        let observed = sequencer.clone();
        let appender = Appender::start(pool.clone(), config.append_writers, Arc::new(move |head| observed.observed(head)));
        let keys = crate::auth::KeyCache::new(config.auth_cache);
        let on_commit: CommitHook = {
            let keys = keys.clone();
            Arc::new(move |position: i64, event_types: &[String]| {
                crate::consistency::appended(position);
                if event_types.iter().any(|t| crate::auth::CHANGES_ACCESS.contains(&t.as_str())) {
                    keys.changed();
                }
            })
        };
        let vault = Vault::new(pool.clone());
        let tenants = Arc::new(Tenants::new(
            AggregateStore::new(pool.clone(), appender.clone(), (), domain::upcasting::upcasters(), on_commit.clone()),
            vault.clone(),
        ));
        let plans = Arc::new(Plans::new(
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
        ));
        let meter: domain::subscription::SubscriptionServices = PgUsageMeter::new(pool.clone());
        let subscriptions =
            Arc::new(Subscriptions::new(AggregateStore::new(pool.clone(), appender.clone(), meter, Vec::new(), on_commit.clone())));
        let members = Members::new(
            vault.clone(),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            subscriptions.clone(),
        );
        let accounts = Accounts::new(pool.clone(), plans, tenants.clone(), subscriptions);
        let usage = Usage::new(
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            pool.clone(),
        );
        let bookings = Bookings::new(
            pool.clone(),
            vault,
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit),
        );

        let manual_clock = config.test_clock.then(|| Arc::new(ManualClock::new(chrono::Utc::now())));
        let clock: Arc<dyn Clock> = match &manual_clock {
            Some(manual) => manual.clone(),
            None => Arc::new(SystemClock),
        };
        let (admin, generated_admin_token) = match config.admin_token.clone() {
            Some(token) => (crate::admin_token::AdminCredential::Configured(token), None),
            None => {
                let generated = crate::admin_token::ensure(&pool).await?;
                let stored = crate::admin_token::AdminCredential::Stored {
                    pool: pool.clone(),
                    lease: config.auth_cache,
                    seen: std::sync::Mutex::new(None),
                };
                (stored, generated)
            }
        };
        let sealer = projections::webhooks::Sealer::new(&crate::config::sealing_key(&config)?);
        let listener = TcpListener::bind(&config.bind).await?;
        let config_rate_limit_instances = config.rate_limit_instances;
        let state = AppState(Arc::new(Inner {
            instance,
            log: EventLog::new(pool.clone()),
            pool,
            config,
            admin,
            clock,
            manual_clock,
            tenants,
            accounts,
            usage,
            bookings,
            members,
            projections,
            keys,
            rate_limits: crate::rate_limit::RateLimits::new(config_rate_limit_instances),
            quotas: crate::routes::quota::QuotaCache::default(),
            sealer,
        }));
        let seed = state.context(None, Actor::System("catalog"));
        state.accounts().plans().seed_defaults(&seed).await.map_err(|e| e.to_string())?;
        state.settle_all().await;
        let mut background = background;
        let billing = state.clone();
        background.push(tokio::spawn(projections::leader::lead(state.pool().clone(), "billing-loop", shutdown.clone(), move |lost| {
            billing_loop(billing.clone(), lost)
        })));
        background.push(tokio::spawn(housekeeping(state.clone(), shutdown.clone())));
        if let Some(relay) = state.config().relay.clone() {
            tracing::info!(url = %relay.url, stream = %relay.stream, "relaying the event log to NATS JetStream");
            background.push(tokio::spawn(projections::relay::Relay::new(state.pool().clone(), relay).run(shutdown.clone())));
        }
        let clock = state.clone();
        let webhooks = projections::webhooks::Webhooks::new(
            state.pool().clone(),
            Arc::new(move || clock.now()),
            state.config().webhook_allow_hosts.clone(),
            state.sealer().clone(),
        )
        .with_opener(crate::routes::webhook_endpoints::personal_data_opener(state.pool().clone()));
        background.push(tokio::spawn(webhooks.run(shutdown.clone())));
        background.push(tokio::spawn(crate::quota_alerts::run(state.clone(), shutdown.clone())));
        crate::metrics::handle();
        let router = router(state.clone());
        Ok(Self { listener, router, state, shutdown, background, generated_admin_token })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The application state (for tests and the CLI).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The admin token if this start generated it (the first start on a database without
    /// `SAAS_LEDGER_ADMIN_TOKEN`: the caller prints it once); `None` if configured or stored
    /// by an earlier start.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// Serves until `stop` completes, then drains in-flight requests and stops the
    /// background work.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let served = axum::serve(self.listener, self.router).with_graceful_shutdown(stop).await;
        self.shutdown.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.state.pool().close().await;
        served
    }
}

/// Runs the billing cycle as of the server's clock every `billing_interval`, so renewals, trial
/// ends and grace expiries happen without anyone asking. One instance at a time runs it (the
/// leader of `billing-loop`).
async fn billing_loop(state: AppState, shutdown: CancellationToken) {
    let interval = state.config().billing_interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match state.run_billing(state.now()).await {
            Ok(report) if !report.failures.is_empty() => tracing::warn!(?report, "billing run had failures"),
            Ok(report) => tracing::debug!(?report, "billing run"),
            Err(e) => tracing::error!(error = ?e, "billing run failed"),
        }
    }
}

/// Forgets expired idempotency records every few minutes.
async fn housekeeping(state: AppState, shutdown: CancellationToken) {
    loop {
        match crate::idempotency::expire(state.pool()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "expired idempotency records deleted"),
            Err(e) => tracing::warn!(error = %e, "could not expire idempotency records"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}

/// Request ids: UUIDv7, so they sort by time in logs.
#[derive(Debug, Clone, Copy)]
struct UuidV7Ids;

impl MakeRequestId for UuidV7Ids {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only if it is a sane token (1-128 of `[A-Za-z0-9._:-]`);
/// otherwise one is generated, so logs and event metadata never carry junk.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = request.headers().get("x-request-id").is_some_and(|v| {
        let bytes = v.as_bytes();
        (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
    });
    if !usable {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// Refuses a path or query string carrying an encoded NUL (`%00`): no identifier or filter
/// contains one, and Postgres text cannot hold one (it would surface as a 500).
async fn refuse_nul(request: Request, next: Next) -> Response {
    let raw = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or_default();
    if raw.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0') {
        let part = if request.uri().path().contains("%00") { "path" } else { "query" };
        return ApiError::validation(part, "must not contain a NUL character (%00)").into_response();
    }
    next.run(request).await
}

/// Makes every error response, whoever produced it (router, body limit, timeout, panic),
/// carry the contract's JSON error body, and scopes the request id for handlers.
async fn contract_errors(request: Request, next: Next) -> Response {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    REQUEST_ID
        .scope(request_id, async move {
            let response = next.run(request).await;
            let status = response.status();
            // Our own answers: the API's JSON errors, and the console's error pages.
            let ours = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html"));
            if status.as_u16() < 400 || ours {
                return response;
            }
            let allow = response.headers().get(header::ALLOW).cloned();
            let mut replaced = ApiError::for_status(status).into_response();
            if let Some(allow) = allow {
                replaced.headers_mut().insert(header::ALLOW, allow);
            }
            replaced
        })
        .await
}

pub(crate) fn router(state: AppState) -> Router {
    let config = state.config().clone();
    routes::router(state.clone())
        .route("/metrics", axum::routing::get(crate::metrics::render).with_state(state.clone()))
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn_with_state(state.clone(), crate::consistency::layer))
        .layer(middleware::from_fn_with_state(state.clone(), crate::idempotency::layer))
        .layer(middleware::from_fn_with_state(state, crate::rate_limit::layer))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, config.request_timeout))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("a handler panicked").into_response()))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(middleware::from_fn(refuse_nul))
        .layer(middleware::from_fn(contract_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(UuidV7Ids))
        .layer(middleware::from_fn(drop_unusable_request_id))
}
