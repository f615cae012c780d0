//! Start-up and shutdown: [`Application::build`] creates and migrates the database, brings
//! every read model up, starts the sequencer, the projectors, the group-commit writer and the
//! background jobs, and binds the listener; [`Application::run_until`] serves, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use commands::accounts::Accounts;
use commands::appender::Appender;
use commands::bookings::Bookings;
use commands::catalog::Catalog;
use commands::clock::{Clock, ManualClock, SystemClock};
use commands::members::Members;
use commands::snapshots::{SnapshotPolicy, Snapshots};
use commands::store::{CommitHook, SnapshotRules};
use commands::subscriptions::{PgUsageMeter, Subscriptions};
use commands::tenants::Tenants;
use commands::usage::Usage;
use commands::vault::Vault;
use commands::{db, Actor, AggregateStore};
use domain::subscription::{Subscription, SubscriptionCommand};
use projections::simulation::store::Simulations;
use projections::webhooks::endpoints::Endpoints;
use projections::{EventLog, Projections, ReadModels, Sequencer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::jobs::{billing_loop, housekeeping};
use super::middleware::router;
use super::state::{AppState, Inner};
use crate::config::Config;

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
        db::follow_too(&pool, projections.batches_pool(), &projections::runner::BATCH_SESSION_SETTINGS);
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
        let plans = Arc::new(Catalog::new(
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
        ));
        // One set of metric definitions (immutable once made) for recording, billing and quotas.
        let definitions = commands::metrics::MetricDefinitions::new(pool.clone());
        let meter: domain::subscription::SubscriptionServices = PgUsageMeter::with_definitions(pool.clone(), definitions.clone());
        let mut subscription_store = AggregateStore::new(pool.clone(), appender.clone(), meter, Vec::new(), on_commit.clone());
        if config.snapshot_every > 0 {
            let rules = SnapshotRules {
                policy: SnapshotPolicy { every: config.snapshot_every, version: domain::subscription::STATE_VERSION },
                compact: Subscription::compact,
                needs_history: SubscriptionCommand::decides_on_history,
            };
            subscription_store = subscription_store.with_snapshots(pool.clone(), Snapshots::start(pool.clone()), rules, Vec::new());
        }
        let subscriptions = Arc::new(Subscriptions::new(subscription_store));
        let members = Members::new(
            vault.clone(),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            subscriptions.clone(),
        );
        let accounts =
            Accounts::new(pool.clone(), plans, tenants.clone(), subscriptions).with_billing_concurrency(config.billing_concurrency);
        let usage = Usage::new(
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            pool.clone(),
        )
        .with_corrections(AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()))
        .with_definitions(definitions);
        let books = commands::books::Books::new(AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()));
        let metrics =
            commands::metrics::Metrics::new(AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()));
        let bookings = Bookings::new(
            pool.clone(),
            vault,
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit.clone()),
            AggregateStore::new(pool.clone(), appender.clone(), (), Vec::new(), on_commit),
        );

        let manual_clock = config.test_clock.then(|| Arc::new(ManualClock::new(config.test_clock_start.unwrap_or_else(chrono::Utc::now))));
        if config.test_clock {
            tracing::warn!("the test clock is on (SAAS_LEDGER_TEST_CLOCK=1): PUT /v1/admin/clock moves this server's time forward");
        }
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
        let replicas = projections::replicas::Replicas::new(pool.clone(), &config.replica_urls, &instance, &projections::all())?;
        let mut background = background;
        if !replicas.is_empty() {
            background.push(replicas.watch(shutdown.clone()));
        }
        let state = AppState(Arc::new(Inner {
            instance,
            log: EventLog::new(pool.clone()),
            reads: ReadModels::new(pool.clone()),
            replicas,
            endpoints: Endpoints::new(pool.clone()),
            simulations: Simulations::new(pool.clone()),
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
            books,
            metrics,
            projections,
            keys,
            rate_limits: crate::rate_limit::RateLimits::new(config_rate_limit_instances),
            quotas: crate::quota_cache::QuotaCache::default(),
            sealer,
        }));
        let seed = state.context(None, Actor::System("catalog"));
        state.accounts().catalog().seed_defaults(&seed).await.map_err(|e| e.to_string())?;
        state.settle_all().await;
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
        .with_opener(personal_data_opener(Vault::new(state.pool().clone())));
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

/// Opens the personal data sealed in a webhook body with its tenant's key just before it is
/// sent (bodies are stored sealed; an erased tenant's stay unreadable).
fn personal_data_opener(vault: Vault) -> projections::webhooks::Opener {
    let vault = Arc::new(vault);
    Arc::new(move |body: String| {
        let vault = vault.clone();
        Box::pin(async move { vault.open_json_text(body).await })
    })
}
