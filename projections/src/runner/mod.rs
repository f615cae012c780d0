//! Projectors: fold the global log into read models, exactly once, with blue/green rebuilds.
//!
//! Each projection (a name and a version) is built by a *run* into a Postgres schema of its
//! own (`rm_<name>_g<generation>`), and the live run's tables are what the stable views in
//! schema `rm` (`rm.tenants`, ...) show. A run reads events after its checkpoint, applies them
//! and moves the checkpoint in one transaction, holding its `projection_runs` row lock so two
//! processes never apply the same batch. A new version, or a rebuild, is a new run beside the
//! live one; once it has caught up it is swapped in by one transaction that also moves the
//! views, so readers never see an empty or half-built model.
//!
//! An event a projection cannot apply stops that run at that position with the error recorded
//! (`last_error`); it is retried with back-off, and resumes when the cause is fixed. Nothing is
//! ever skipped.

mod batch;
mod projection;
mod waiting;

pub use projection::{Projection, ProjectionError, RunInfo};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::leader;
use crate::log::{self, StoredEvent};
use crate::sequencer::Sequencer;

/// The shortest time between the starts of two rounds of one projector (see `follow`).
const PACE: Duration = Duration::from_millis(40);

/// How long a projector trusts its list of runs before reading it again (a rebuild started
/// elsewhere is picked up within this).
const RUNS_FRESH: Duration = Duration::from_millis(500);

/// A projector's last look at its runs (`projection_runs`), so that rounds under load do not
/// each read it again.
#[derive(Default)]
struct RunsSeen(Option<(Instant, Vec<(i32, String)>)>);

impl RunsSeen {
    fn fresh(&self) -> Option<Vec<(i32, String)>> {
        self.0.as_ref().filter(|(at, _)| at.elapsed() < RUNS_FRESH).map(|(_, runs)| runs.clone())
    }

    fn remember(&mut self, runs: Vec<(i32, String)>) {
        self.0 = Some((Instant::now(), runs));
    }

    fn forget(&mut self) {
        self.0 = None;
    }
}

/// How many positions one projector transaction covers at most.
const BATCH: i64 = 2_000;

/// The same for a projection that reads only some aggregate types (most positions of its
/// range are not read at all).
const FILTERED_BATCH: i64 = 5_000;

/// Applies `event` to `projection`, upcast unless the projection reads stored events.
async fn apply(projection: &dyn Projection, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
    if projection.reads_stored_events() {
        projection.apply(conn, schema, event).await
    } else {
        projection.apply(conn, schema, &event.upcast()).await
    }
}

#[derive(Debug, Clone)]
struct Run {
    name: &'static str,
    generation: i32,
    schema: String,
}

enum Batch {
    /// Applied a batch up to `position`; `more` if it was full (there may be more).
    Applied { position: i64, more: bool },
    /// Nothing to do; the checkpoint is here.
    Idle(i64),
    /// The run was retired or promoted elsewhere; stop.
    Gone,
}

struct Failure {
    position: i64,
    error: ProjectionError,
}

/// All projections of this process: startup, the projector loops, waiting, status, rebuilds.
pub struct Projections {
    pool: PgPool,
    /// Connections for batches: `pool`'s, committing without waiting for the disk.
    batches: PgPool,
    sequencer: Arc<Sequencer>,
    projections: Vec<Arc<dyn Projection>>,
    live: HashMap<&'static str, watch::Sender<i64>>,
    /// Per projection: the live run's generation, and the position up to which it was found
    /// to have nothing to apply (see [`Projections::nothing_to_apply`]).
    quiet: std::sync::Mutex<HashMap<&'static str, (i32, i64)>>,
    /// Per projection: the callers waiting for it to reach a position right now
    /// ([`Projections::wait_for`]; while there are any, its rounds are not paced: someone's
    /// answer waits on them), and a signal for a paced projector to start its round at once.
    waiters: HashMap<&'static str, (std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

/// The session settings of the batches' connections besides the main pool's.
pub const BATCH_SESSION_SETTINGS: [(&str, &str); 1] = [("synchronous_commit", "off")];

impl Projections {
    /// The pool of the projector batches (`BATCH_SESSION_SETTINGS` on the main pool's
    /// connect options), for a caller that moves the pools to a new primary.
    pub fn batches_pool(&self) -> &PgPool {
        &self.batches
    }

    /// The given projections over `pool`, fed by `sequencer`.
    pub fn new(pool: PgPool, sequencer: Arc<Sequencer>, projections: Vec<Arc<dyn Projection>>) -> Arc<Self> {
        let live = projections.iter().map(|p| (p.name(), watch::Sender::new(0))).collect();
        let options = (*pool.connect_options()).clone().options(BATCH_SESSION_SETTINGS);
        // The main pool's rules (acquire timeout, the ping after an idle second), fewer connections.
        let batches = pool.options().clone().max_connections(projections.len() as u32 + 2).connect_lazy_with(options);
        Arc::new(Self {
            pool,
            batches,
            sequencer,
            live,
            quiet: Default::default(),
            waiters: projections.iter().map(|p| (p.name(), Default::default())).collect(),
            projections,
        })
    }

    fn projection(&self, name: &str) -> Option<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name)
    }

    /// Makes sure every projection has a live run of its current version, building (and
    /// swapping in) a new run where needed. A projection without any live run is built before
    /// this returns, so that reads never meet a missing view; one whose live run is of an older
    /// version keeps serving from it while the new version builds in the background.
    pub async fn prepare(&self) -> Result<(), ProjectionError> {
        self.sequencer.drain().await?;
        for projection in &self.projections {
            let live: Option<(i32, i32)> =
                sqlx::query_as("SELECT generation, version FROM projection_runs WHERE name = $1 AND status = 'live'")
                    .bind(projection.name())
                    .fetch_optional(&self.pool)
                    .await?;
            let building: Option<i32> =
                sqlx::query_scalar("SELECT generation FROM projection_runs WHERE name = $1 AND status = 'building' AND version = $2")
                    .bind(projection.name())
                    .bind(projection.version())
                    .fetch_optional(&self.pool)
                    .await?;
            match live {
                Some((_, version)) if version == projection.version() => {}
                Some(_) if building.is_some() => {}
                Some(_) => {
                    self.new_run(projection.as_ref()).await?;
                }
                None => {
                    let run = match building {
                        Some(generation) => self.run_of(projection.as_ref(), generation),
                        None => self.new_run(projection.as_ref()).await?,
                    };
                    self.catch_up(&run).await.map_err(|f| f.error)?;
                    self.promote(&run).await?;
                }
            }
        }
        Ok(())
    }

    /// Starts a rebuild of `name` (or of every projection for `all`) from position 0 beside
    /// the live run; returns the new runs' generations. The projector loops swap each one in
    /// once it has caught up.
    pub async fn rebuild(&self, name: &str) -> Result<Vec<(String, i32)>, ProjectionError> {
        let mut started = Vec::new();
        for projection in self.projections.iter().filter(|p| name == "all" || p.name() == name) {
            sqlx::query("DELETE FROM projection_runs WHERE name = $1 AND status = 'building'")
                .bind(projection.name())
                .execute(&self.pool)
                .await?;
            let run = self.new_run(projection.as_ref()).await?;
            started.push((run.name.to_owned(), run.generation));
        }
        Ok(started)
    }

    /// Builds run `generation` of `name` to the head in this process, reporting `(position,
    /// head)` after every batch, then swaps it in. Safe beside running servers: batches and
    /// the swap take the same row locks their projectors do.
    pub async fn build(&self, name: &str, generation: i32, on_progress: impl Fn(i64, i64)) -> Result<i64, ProjectionError> {
        let projection = self.projection(name).ok_or_else(|| ProjectionError::Database(sqlx::Error::RowNotFound))?;
        let run = self.run_of(projection.as_ref(), generation);
        loop {
            let head = log::head(&self.pool).await?;
            match self.batch(&run).await.map_err(|f| f.error)? {
                Batch::Applied { position, .. } => on_progress(position, head),
                Batch::Idle(position) => {
                    on_progress(position, head);
                    self.promote(&run).await?;
                    return Ok(position);
                }
                Batch::Gone => return Ok(0),
            }
        }
    }

    /// The names of the projections.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    fn run_of(&self, projection: &dyn Projection, generation: i32) -> Run {
        Run { name: projection.name(), generation, schema: format!("rm_{}_g{generation}", projection.name()) }
    }

    async fn new_run(&self, projection: &dyn Projection) -> Result<Run, ProjectionError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('saas-ledger:projection-runs'))").execute(&mut *tx).await?;
        let generation: i32 = sqlx::query_scalar("SELECT coalesce(max(generation), 0) + 1 FROM projection_runs WHERE name = $1")
            .bind(projection.name())
            .fetch_one(&mut *tx)
            .await?;
        let run = self.run_of(projection, generation);
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", run.schema)).execute(&mut *tx).await?;
        sqlx::query(&format!("CREATE SCHEMA {}", run.schema)).execute(&mut *tx).await?;
        projection.create(&mut tx, &run.schema).await?;
        sqlx::query("INSERT INTO projection_runs (name, generation, version, schema_name, status) VALUES ($1, $2, $3, $4, 'building')")
            .bind(run.name)
            .bind(generation)
            .bind(projection.version())
            .bind(&run.schema)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(projection = run.name, generation, "projection run created");
        Ok(run)
    }

    /// Swaps a caught-up building run in: in one transaction, with the live run's row locked
    /// so its projector cannot move, the building run applies the last events, the `rm` views
    /// move to its tables, and the old run is retired. Its schema is dropped afterwards.
    ///
    /// Readers lock views in whatever order their queries name them, so the swap could deadlock
    /// with one; it takes its view locks with a short `lock_timeout` instead and, when it cannot
    /// get them, rolls back (freeing the readers) and tries again. Readers wait at most that
    /// long and are never the ones aborted.
    async fn promote(&self, run: &Run) -> Result<(), ProjectionError> {
        let projection = self.projection(run.name).expect("runs belong to known projections");
        // Each index sorts on a connection of its own, side by side.
        let indexing = projection.deferred_indexes().into_iter().map(|ddl| {
            let sql = ddl.replace("{schema}", &run.schema);
            async move { sqlx::query(&sql).execute(&self.pool).await }
        });
        for done in futures::future::join_all(indexing).await {
            done?;
        }
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            match self.try_promote(run).await {
                Err(ProjectionError::Database(sqlx::Error::Database(e))) if e.code().as_deref() == Some("55P03") && attempt < 50 => {
                    tracing::debug!(projection = run.name, attempt, "view swap yielded to readers; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * attempt.min(10))).await;
                }
                other => return other,
            }
        }
    }

    async fn try_promote(&self, run: &Run) -> Result<(), ProjectionError> {
        let projection = self.projection(run.name).expect("runs belong to known projections");
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i32, String, i64, String)> =
            sqlx::query_as("SELECT generation, status, position, schema_name FROM projection_runs WHERE name = $1 AND status <> 'retired' ORDER BY generation FOR UPDATE")
                .bind(run.name)
                .fetch_all(&mut *tx)
                .await?;
        let Some(&(_, ref status, mut position, _)) = rows.iter().find(|r| r.0 == run.generation) else {
            return Ok(());
        };
        if status != "building" {
            return Ok(());
        }
        // The live run's row is locked, so nothing else moves; appends go on, and the head
        // is read again until the run has applied it.
        loop {
            let head = log::head(&mut *tx).await?;
            if head <= position {
                break;
            }
            let last = head.min(position + BATCH);
            projection.apply_range(&mut tx, &run.schema, position, last, &self.pool).await?;
            position = last;
        }
        sqlx::query("SET LOCAL lock_timeout = '100ms'").execute(&mut *tx).await?;
        for table in projection.tables() {
            sqlx::query(&format!("DROP VIEW IF EXISTS rm.{table}")).execute(&mut *tx).await?;
            sqlx::query(&format!("CREATE VIEW rm.{table} AS SELECT * FROM {}.{table}", run.schema)).execute(&mut *tx).await?;
        }
        for (view, select) in projection.analytics_views() {
            sqlx::query(&format!("DROP VIEW IF EXISTS analytics.{view}")).execute(&mut *tx).await?;
            sqlx::query(&format!("CREATE VIEW analytics.{view} AS {}", select.replace("{schema}", &run.schema))).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE projection_runs SET status = 'retired', updated_at = now() WHERE name = $1 AND status IN ('live', 'building') AND generation <> $2")
            .bind(run.name)
            .bind(run.generation)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE projection_runs SET status = 'live', position = $3, last_error = NULL, last_error_position = NULL, updated_at = now() WHERE name = $1 AND generation = $2")
            .bind(run.name)
            .bind(run.generation)
            .bind(position)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.publish(run.name, "live", position);
        tracing::info!(projection = run.name, generation = run.generation, position, "projection run is live");
        for (generation, _, _, schema) in rows.iter().filter(|r| r.0 != run.generation) {
            if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&self.pool).await {
                tracing::warn!(projection = run.name, generation, error = %e, "could not drop a retired run's schema");
            }
        }
        Ok(())
    }

    /// Starts the sequencer and one projector loop per projection; they stop on `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(self.sequencer.clone().run(shutdown.clone()))];
        // Each projection is followed by one instance at a time (the holder of its advisory
        // lock); the others stand by and take over when it dies.
        for projection in &self.projections {
            let this = self.clone();
            let name = projection.name();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let pool = this.pool.clone();
                leader::lead(pool, &format!("projection:{name}"), shutdown, |lost| {
                    let this = this.clone();
                    async move { this.follow(name, lost).await }
                })
                .await;
            }));
        }
        tasks
    }

    /// One projection's loop: keep every non-retired run caught up, and swap a building run in
    /// once it has caught up.
    async fn follow(self: Arc<Self>, name: &'static str, shutdown: CancellationToken) {
        let mut head = self.sequencer.subscribe();
        let mut failures = 0u32;
        let mut runs = RunsSeen::default();
        loop {
            let round = Instant::now();
            match self.follow_once(name, &mut runs).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    runs.forget();
                    tracing::error!(projection = name, error = %e, failures, "projection is stuck; retrying");
                }
            }
            let pause = if failures == 0 { Duration::from_millis(200) } else { Duration::from_millis(250 * u64::from(failures.min(40))) };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = head.changed(), if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
            // Under a stream of appends, rounds start at least PACE apart, so that each applies
            // what a few group commits wrote in one transaction instead of one per commit (on a
            // small machine Postgres is bound by the number of statements). After a quiet
            // spell the first round starts at once, and so does every round while a caller
            // waits for a position (a command settling, a read of one's own writes): their
            // answers wait on it, and the work done meanwhile still makes the round's batch.
            let since = round.elapsed();
            if since < PACE {
                let (waiting, arrived) = &self.waiters[name];
                let arrived = arrived.notified();
                if waiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(PACE - since) => {}
                        () = arrived => {}
                    }
                }
            }
        }
    }

    async fn follow_once(&self, name: &'static str, seen: &mut RunsSeen) -> Result<(), ProjectionError> {
        let projection = self.projection(name).expect("followed projections are known");
        let runs = match seen.fresh() {
            Some(runs) => runs,
            None => {
                let runs: Vec<(i32, String)> = sqlx::query_as(
                    "SELECT generation, status FROM projection_runs WHERE name = $1 AND status <> 'retired' ORDER BY generation",
                )
                .bind(name)
                .fetch_all(&self.pool)
                .await?;
                seen.remember(runs.clone());
                runs
            }
        };
        for (generation, status) in runs {
            let run = self.run_of(projection.as_ref(), generation);
            // While callers wait for this projection, its batch runs at once: they wait for
            // events of its types, and the check would be one more round trip before them.
            let awaited = self.waiters[name].0.load(std::sync::atomic::Ordering::Acquire) > 0;
            if status == "live" && !awaited && self.nothing_to_apply(&run).await? {
                continue;
            }
            let position = self.catch_up(&run).await.map_err(|f| f.error)?;
            if position.is_none() {
                // Retired or promoted meanwhile (by a rebuild, or another instance).
                seen.forget();
            }
            if status == "building" && position.is_some() {
                let head = log::head(&self.pool).await?;
                if position >= Some(head) {
                    self.promote(&run).await?;
                    seen.forget();
                }
            }
        }
        Ok(())
    }

    /// Whether a live run of a projection that reads only some aggregate types can skip this
    /// round: nothing of its types was appended after its checkpoint. It then tells this
    /// process's waiters it is at the head (its model already holds everything up to there)
    /// without a transaction, and moves its stored checkpoint over the others' events only in
    /// bulk, by one UPDATE that reads none of them: once [`FILTERED_BATCH`] positions or a
    /// second have gone by. Under a stream of one
    /// aggregate type this spares a commit per projection per round; the stored lag of such
    /// a projection may show up to that much.
    async fn nothing_to_apply(&self, run: &Run) -> Result<bool, sqlx::Error> {
        let Some(types) = self.projection(run.name).and_then(|p| p.aggregate_types()) else {
            return Ok(false);
        };
        // From the run's checkpoint up to `quiet`, this run was already found to have nothing
        // of its types (checkpoints only move forward); only the rest is looked at.
        let quiet = self
            .quiet
            .lock()
            .expect("not poisoned")
            .get(run.name)
            .filter(|(generation, _)| *generation == run.generation)
            .map_or(0, |q| q.1);
        // One statement, one snapshot: the head and the events up to it agree.
        let (position, head, stale, relevant): (i64, i64, bool, bool) = sqlx::query_as(
            "SELECT r.position, h.position, r.updated_at < now() - interval '1 second',
                    EXISTS (SELECT 1 FROM events e WHERE e.position > greatest(r.position, $3) AND e.position <= h.position AND (e.aggregate_type = ANY($4)) IS TRUE)
             FROM projection_runs r CROSS JOIN event_log_head h WHERE r.name = $1 AND r.generation = $2",
        )
        .bind(run.name)
        .bind(run.generation)
        .bind(quiet)
        .bind(types)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or((0, 0, true, true));
        if relevant || head <= position {
            return Ok(false);
        }
        if stale || head - position >= FILTERED_BATCH {
            // Nothing of its types lies between the stored checkpoint and the head (this
            // snapshot says so): the checkpoint moves there without reading those events.
            sqlx::query(
                "UPDATE projection_runs SET position = $3, updated_at = now()
                 WHERE name = $1 AND generation = $2 AND status = 'live' AND position < $3",
            )
            .bind(run.name)
            .bind(run.generation)
            .bind(head)
            .execute(&self.pool)
            .await?;
        }
        self.quiet.lock().expect("not poisoned").insert(run.name, (run.generation, head));
        self.publish(run.name, "live", head);
        Ok(true)
    }
}
