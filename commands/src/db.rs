//! Connecting to Postgres, creating the database if it is missing, and migrating it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::cluster;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Settings every connection of ours gets. Transactions must stay short: they hold row locks
/// that other commands wait for, so one left open by a bug is ended by the server.
/// JIT is off: our statements are short, and the planner's guesses about array parameters
/// (unnest of a batch) made Postgres compile some of them to machine code on every call.
const SESSION_SETTINGS: [(&str, &str); 4] =
    [("application_name", "saas-ledger"), ("idle_in_transaction_session_timeout", "60s"), ("lock_timeout", "10s"), ("jit", "off")];

/// Opens a pool of at most `max_connections` to `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_as(url, max_connections, "saas-ledger").await
}

/// The connect options of the single-host `url`, with our session settings, naming the sessions
/// `application_name`.
fn options_for(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options(SESSION_SETTINGS).application_name(application_name))
}

/// Like [`connect`], naming the sessions `application_name` (an instance's id, so that
/// `pg_stat_activity` and leadership queries can tell instances apart). A `url` with several
/// hosts connects to the one that accepts writes and follows the primary from then on
/// ([`crate::cluster`]).
pub async fn connect_as(url: &str, max_connections: u32, application_name: &str) -> Result<PgPool, sqlx::Error> {
    let hosts = cluster::host_urls(url);
    let primary = if hosts.len() > 1 { cluster::find_primary(&hosts, FIND_PRIMARY_FOR).await? } else { 0 };
    let options = options_for(&hosts[primary], application_name)?;
    // One connection first, on its own: a wrong host, port or database then fails within
    // seconds with its cause ("connection refused"), not as a pool timing out.
    match tokio::time::timeout(Duration::from_secs(5), sqlx::ConnectOptions::connect(&options)).await {
        Ok(Ok(conn)) => drop(conn),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from Postgres within 5 s"))),
    }
    // A connection is pinged before use only if it sat idle for a while (Postgres may have
    // restarted meanwhile), not before every acquire as sqlx does by default: that was one more
    // round trip for every statement, as many as the statements themselves on the hot paths
    // (measured: bench/results/design-measurements.md). A connection made before the pools
    // moved to a new primary is dropped (it is to the old one).
    let switches = cluster::Switches::default();
    let seen = switches.clone();
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let stale = seen.predates_switch(meta.age);
            Box::pin(async move {
                if stale {
                    return Ok(false);
                }
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await?;
    if hosts.len() > 1 {
        let followed = cluster::Cluster::new(hosts, primary, &pool, application_name, options_for, switches);
        followed.watch();
    }
    Ok(pool)
}

/// A second pool on `pool`'s database: its rules (acquire timeout, the ping after an idle
/// second, leaving the old primary behind), at most `max_connections`, each session with
/// `extra` settings besides; it follows the primary as `pool` does. Connects lazily.
pub fn derive(pool: &PgPool, max_connections: u32, extra: &[(&str, &str)]) -> PgPool {
    let options = (*pool.connect_options()).clone().options(extra.iter().copied());
    let derived = pool.options().clone().max_connections(max_connections).connect_lazy_with(options);
    follow_too(pool, &derived, extra);
    derived
}

/// Has `derived` (a pool made from `pool`'s connect options with the `extra` session settings)
/// follow the primary as `pool` does, if `pool`'s database has several hosts.
pub fn follow_too(pool: &PgPool, derived: &PgPool, extra: &[(&str, &str)]) {
    if let Some(followed) = cluster::Cluster::of(pool) {
        followed.add(derived, extra);
    }
}

/// How long a server starting on several hosts looks for the one that accepts writes.
const FIND_PRIMARY_FOR: Duration = Duration::from_secs(30);

/// How long a pooled connection may sit idle before it is checked with a ping on its next use
/// (the writer's flushers hold theirs to the same rule).
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Creates the database named in `url` unless it exists (safe when several processes race).
/// With several hosts, on the one that accepts writes.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let hosts = cluster::host_urls(url);
    let url = if hosts.len() > 1 { hosts[cluster::find_primary(&hosts, FIND_PRIMARY_FOR).await?].as_str() } else { url };
    if Postgres::database_exists(url).await? {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        other => other,
    }
}

/// Applies the embedded migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether every embedded migration has been applied (for readiness checks).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
    Ok(applied == Some(latest))
}
