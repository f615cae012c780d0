//! Reads from hot standbys (`SAAS_LEDGER_REPLICA_URLS`). A replica replays the primary's WAL,
//! read models and their checkpoints (`projection_runs`) included, so the position its live
//! read models have applied says exactly which writes its answers reflect. A watch asks every
//! replica for that position (and its replay lag) every [`POLL_EVERY`]; a read that must reflect
//! position `p` is served by a reachable replica whose read models are at `p` or past it, and by
//! the primary otherwise: never staler than from the primary alone. A replica that does not
//! answer is skipped until it answers again.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// How often each replica is asked how far it is.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// How long a replica may take to answer the watch (or a read to get a connection).
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

/// One replica and what the watch last saw of it.
struct Replica {
    host: String,
    pool: PgPool,
    reachable: AtomicBool,
    /// The position every live read model of the replica has applied (-1: unknown).
    applied: AtomicI64,
    /// The replay lag, as last measured.
    lag: Mutex<(Option<i64>, Option<f64>)>,
}

/// The replicas reads may be served from.
pub struct Replicas {
    primary: PgPool,
    /// Per projection, the aggregate types it reads (`null`: every type), as JSON for the poll.
    types: serde_json::Value,
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

/// A replica as `GET /v1/admin/cluster` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// `host:port`.
    pub host: String,
    /// Whether it answered the last time it was asked.
    pub reachable: bool,
    /// WAL bytes the primary has written that it has not replayed (`null`: unknown).
    pub lag_bytes: Option<i64>,
    /// Seconds since the last transaction it replayed was committed, while it is behind (0 when
    /// it has replayed everything; `null`: unknown).
    pub lag_seconds: Option<f64>,
    /// The log position its read models have applied (`null`: unknown).
    pub applied_position: Option<i64>,
}

impl Replicas {
    /// The replicas at `urls` (hot standbys of `primary`'s database), connected lazily, for the
    /// read models of `projections`.
    pub fn new(
        primary: PgPool,
        urls: &[String],
        application_name: &str,
        projections: &[Arc<dyn crate::Projection>],
    ) -> Result<Arc<Self>, sqlx::Error> {
        let types = projections.iter().map(|p| (p.name().to_owned(), serde_json::json!(p.aggregate_types()))).collect();
        let mut replicas = Vec::new();
        for url in urls {
            let options = PgConnectOptions::from_str(url)?
                .application_name(application_name)
                .options([("default_transaction_read_only", "on"), ("jit", "off")]);
            let host = format!("{}:{}", options.get_host(), options.get_port());
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(REPLICA_TIMEOUT)
                .test_before_acquire(false)
                .connect_lazy_with(options);
            replicas.push(Replica {
                host,
                pool,
                reachable: AtomicBool::new(false),
                applied: AtomicI64::new(-1),
                lag: Mutex::new((None, None)),
            });
        }
        Ok(Arc::new(Self { primary, types: serde_json::Value::Object(types), replicas, next: AtomicUsize::new(0) }))
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// A pool of a reachable replica whose read models have applied `position`, taking turns
    /// among those that have; `None`: the read is the primary's.
    pub fn serving(&self, position: i64) -> Option<&PgPool> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.replicas[(start + k) % n])
            .find(|r| r.reachable.load(Ordering::Relaxed) && r.applied.load(Ordering::Relaxed) >= position)
            .map(|r| &r.pool)
    }

    /// Marks the replica of `pool` unreachable (a read on it failed) until the watch hears from
    /// it again.
    pub fn failed(&self, pool: &PgPool) {
        let options = pool.connect_options();
        if let Some(r) = self.replicas.iter().find(|r| r.host == format!("{}:{}", options.get_host(), options.get_port())) {
            r.reachable.store(false, Ordering::Relaxed);
        }
    }

    /// Every replica as last seen.
    pub fn views(&self) -> Vec<ReplicaView> {
        self.replicas
            .iter()
            .map(|r| {
                let (lag_bytes, lag_seconds) = *r.lag.lock().unwrap_or_else(|p| p.into_inner());
                let applied = r.applied.load(Ordering::Relaxed);
                let reachable = r.reachable.load(Ordering::Relaxed);
                ReplicaView {
                    host: r.host.clone(),
                    reachable,
                    lag_bytes: lag_bytes.filter(|_| reachable),
                    lag_seconds: lag_seconds.filter(|_| reachable),
                    applied_position: (applied >= 0 && reachable).then_some(applied),
                }
            })
            .collect()
    }

    /// Asks every replica how far it is, every [`POLL_EVERY`], until `stop` is cancelled.
    pub fn watch(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        let replicas = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(POLL_EVERY) => {}
                }
                let head_lsn: Option<String> = tokio::time::timeout(
                    REPLICA_TIMEOUT,
                    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&replicas.primary),
                )
                .await
                .ok()
                .and_then(Result::ok);
                for r in &replicas.replicas {
                    let asked = tokio::time::timeout(REPLICA_TIMEOUT, poll(&r.pool, head_lsn.as_deref(), &replicas.types)).await;
                    match asked {
                        Ok(Ok((applied, lag_bytes, lag_seconds))) => {
                            r.applied.store(applied, Ordering::Relaxed);
                            *r.lag.lock().unwrap_or_else(|p| p.into_inner()) = (lag_bytes, lag_seconds);
                            r.reachable.store(true, Ordering::Relaxed);
                        }
                        _ => r.reachable.store(false, Ordering::Relaxed),
                    }
                }
            }
        })
    }
}

/// One replica's applied position, its replay lag in bytes behind `head_lsn` and in seconds.
/// The applied position is the least over its live read models of what each reflects: its
/// checkpoint, or, for one that reads only some aggregate types (`types`), up to the first event
/// of those types after its checkpoint (the projectors move such a checkpoint over other types'
/// events only now and then; the primary's instances know the rest in memory).
async fn poll(pool: &PgPool, head_lsn: Option<&str>, types: &serde_json::Value) -> Result<(i64, Option<i64>, Option<f64>), sqlx::Error> {
    let (applied, lag_bytes, since_replayed): (Option<i64>, Option<i64>, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT min(CASE WHEN t.types IS NULL OR jsonb_typeof(t.types) <> 'array' THEN r.position
                                 ELSE coalesce((SELECT min(e.position) - 1 FROM events e
                                                WHERE e.position > r.position AND e.position <= h.position
                                                  AND e.aggregate_type IN (SELECT jsonb_array_elements_text(t.types))),
                                               greatest(r.position, h.position)) END)
                 FROM projection_runs r
                 CROSS JOIN event_log_head h
                 LEFT JOIN jsonb_each($2::jsonb) AS t(name, types) ON t.name = r.name
                 WHERE r.status = 'live'),
                CASE WHEN $1::text IS NULL THEN NULL
                     ELSE greatest(pg_wal_lsn_diff($1::text::pg_lsn, coalesce(pg_last_wal_replay_lsn(), $1::text::pg_lsn)), 0)::bigint END,
                extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
    )
    .bind(head_lsn)
    .bind(types)
    .fetch_one(pool)
    .await?;
    let lag_seconds = match lag_bytes {
        Some(0) => Some(0.0),
        _ => since_replayed.map(|s| s.max(0.0)),
    };
    Ok((applied.unwrap_or(-1), lag_bytes, lag_seconds))
}
