//! [`AppState`]: what every handler shares, built once at start-up. The primary pool is for
//! the write side and the tables written directly (idempotency, sessions, endpoints); every
//! read of the read models goes through [`AppState::reads`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use commands::accounts::Accounts;
use commands::billing_run::BillingReport;
use commands::bookings::Bookings;
use commands::clock::{Clock, ManualClock};
use commands::members::Members;
use commands::tenants::Tenants;
use commands::usage::Usage;
use commands::vault::Vault;
use commands::{Actor, CommandContext, Committed};
use cqrs_es::Aggregate;
use projections::simulation::store::Simulations;
use projections::webhooks::endpoints::Endpoints;
use projections::{EventLog, Projections, ReadModels};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::CallerKey;
use crate::config::Config;
use crate::error::{ApiError, REQUEST_ID};

/// How long a command's response waits for the read models to include it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared, immutable application state (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub(super) Arc<Inner>);

pub(super) struct Inner {
    pub(super) instance: String,
    pub(super) pool: PgPool,
    pub(super) reads: ReadModels,
    pub(super) replicas: Arc<projections::replicas::Replicas>,
    pub(super) endpoints: Endpoints,
    pub(super) simulations: Simulations,
    pub(super) config: Config,
    pub(super) admin: crate::admin_token::AdminCredential,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) manual_clock: Option<Arc<ManualClock>>,
    pub(super) tenants: Arc<Tenants>,
    pub(super) accounts: Accounts,
    pub(super) usage: Usage,
    pub(super) bookings: Bookings,
    pub(super) members: Members,
    pub(super) books: commands::books::Books,
    pub(super) metrics: commands::metrics::Metrics,
    pub(super) projections: Arc<Projections>,
    pub(super) log: EventLog,
    pub(super) keys: crate::auth::KeyCache,
    pub(super) rate_limits: crate::rate_limit::RateLimits,
    pub(super) quotas: crate::quota_cache::QuotaCache,
    pub(super) sealer: projections::webhooks::Sealer,
}

impl AppState {
    /// The primary's pool: the write side, and the tables written directly (idempotency
    /// records, console sessions, the admin credential). Reads of read models go through
    /// [`Self::reads`].
    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    /// The read side: every read of a read model goes through this one handle. Within a read
    /// that [`crate::consistency::layer`] routed to a replica, the replica's read models.
    pub fn reads(&self) -> ReadModels {
        match crate::consistency::read_from() {
            Some(replica) => ReadModels::new(replica),
            None => self.0.reads.clone(),
        }
    }

    /// The replicas reads may be served from (`SAAS_LEDGER_REPLICA_URLS`; none by default).
    pub fn replicas(&self) -> &projections::replicas::Replicas {
        &self.0.replicas
    }

    /// The registered webhook endpoints and their deliveries.
    pub fn endpoints(&self) -> &Endpoints {
        &self.0.endpoints
    }

    /// The simulations asked for.
    pub fn simulations(&self) -> &Simulations {
        &self.0.simulations
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

    /// The platform's books (closing months of revenue).
    pub fn books(&self) -> &commands::books::Books {
        &self.0.books
    }

    /// The billable-metric catalog's commands.
    pub fn metrics(&self) -> &commands::metrics::Metrics {
        &self.0.metrics
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

    /// Runs the billing cycle as of `as_of` with read models settled before and after,
    /// serialised across every instance (see [`commands::billing_run`]).
    pub async fn run_billing(&self, as_of: chrono::DateTime<chrono::Utc>) -> Result<BillingReport, ApiError> {
        let correlation = REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| format!("billing-{}", Uuid::now_v7()));
        let lock = projections::leader::key("billing-run");
        Ok(self.0.accounts.run_billing_exclusively(as_of, &correlation, lock, || self.settle_all()).await?)
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
        self.settle_in(aggregate_id, committed, None).await
    }

    /// [`Self::settle`] for the read models named `only`: those the caller's next commands
    /// decide on (every read waits for the rest by itself, see [`crate::consistency`]).
    pub async fn settle_for<A: Aggregate>(&self, aggregate_id: &str, committed: &Committed<A>, only: &[&str]) {
        self.settle_in(aggregate_id, committed, Some(only)).await
    }

    async fn settle_in<A: Aggregate>(&self, aggregate_id: &str, committed: &Committed<A>, only: Option<&[&str]>) {
        if let Some(position) = committed.position {
            let started = std::time::Instant::now();
            let settled = match only {
                None => self.0.projections.wait_for(position, SETTLE_TIMEOUT).await,
                Some(only) => self.0.projections.wait_for_some(position, only, SETTLE_TIMEOUT).await,
            };
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
        Ok(self.reads().tenants().status(id).await?)
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
        let id = self.reads().tenants().id_by_code(reference).await?;
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

    /// Quota answers by tenant (see [`crate::quota_cache::QuotaCache`]).
    pub fn quotas(&self) -> &crate::quota_cache::QuotaCache {
        &self.0.quotas
    }

    /// The API-key lookups this process reuses (see [`crate::auth::KeyCache`]).
    pub fn keys(&self) -> &crate::auth::KeyCache {
        &self.0.keys
    }

    /// The active key with this hash, with its tenant's status; a lookup younger than the
    /// configured `auth_cache` is reused.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<CallerKey>, ApiError> {
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

    async fn key_from_database(&self, hash: &str) -> Result<Option<CallerKey>, ApiError> {
        match self.reads().tenants().key_by_hash(hash).await? {
            None => Ok(None),
            Some(grant) => Ok(Some(CallerKey::try_from(grant)?)),
        }
    }
}
