//! Leadership across server instances: Postgres session advisory locks.
//!
//! A singleton job (a projection's projector, the billing loop, the event relay) runs only
//! while its instance holds the job's advisory lock on a connection of its own. The lock lives
//! as long as that connection: when the instance dies, Postgres ends the session and another
//! instance, trying every [`RETRY`], takes the job over. The holder checks its connection every
//! [`CHECK`] and steps down if it is gone.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often a follower tries to take a job over.
pub const RETRY: Duration = Duration::from_millis(500);
/// How often a leader checks that it still holds its lock.
pub const CHECK: Duration = Duration::from_secs(2);

/// The advisory-lock key of job `name` (stable across versions and instances).
pub fn key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("saas-ledger:{name}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A held leadership: the connection that holds the lock. Dropping it closes the connection,
/// which releases the lock.
#[derive(Debug)]
pub struct Leadership {
    conn: PgConnection,
    name: String,
}

impl Leadership {
    /// Tries once to become the leader of `name`.
    pub async fn try_acquire(pool: &PgPool, name: &str) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key(name)).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(Self { conn, name: name.to_owned() }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Waits until this instance leads `name` (or `shutdown`, then `None`).
    pub async fn acquire(pool: &PgPool, name: &str, shutdown: &CancellationToken) -> Option<Self> {
        loop {
            match Self::try_acquire(pool, name).await {
                Ok(Some(leadership)) => {
                    tracing::info!(job = name, "this instance leads the job");
                    return Some(leadership);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(job = name, error = %e, "could not try the job's lock"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Whether the lock is still held (its connection answers).
    pub async fn still_held(&mut self) -> bool {
        self.conn.ping().await.is_ok()
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The `application_name` of the session leading `name`, if any instance leads it.
pub async fn holder(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(holder_since(pool, name).await?.map(|(instance, _)| instance))
}

/// The `application_name` of the session leading `name` and when that session began, if any
/// instance leads it.
pub async fn holder_since(pool: &PgPool, name: &str) -> Result<Option<(String, Option<chrono::DateTime<chrono::Utc>>)>, sqlx::Error> {
    let key = key(name);
    sqlx::query_as(
        "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::bigint = $1 AND l.objid::bigint = $2",
    )
    .bind((key >> 32) & 0xffff_ffff)
    .bind(key & 0xffff_ffff)
    .fetch_optional(pool)
    .await
}

/// Runs `job` whenever this instance leads `name`, until `shutdown`. `job` gets a token that is
/// cancelled when leadership is lost; it should return soon after.
pub async fn lead<F, Fut>(pool: PgPool, name: &str, shutdown: CancellationToken, mut job: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(mut leadership) = Leadership::acquire(&pool, name, &shutdown).await {
        let lost = shutdown.child_token();
        let watchdog = {
            let lost = lost.clone();
            async move {
                loop {
                    tokio::select! {
                        () = lost.cancelled() => return,
                        () = tokio::time::sleep(CHECK) => {}
                    }
                    if !leadership.still_held().await {
                        tracing::warn!(job = leadership.name(), "lost the job's lock; stepping down");
                        lost.cancel();
                        return;
                    }
                }
            }
        };
        let work = job(lost.clone());
        tokio::select! {
            () = work => {}
            () = watchdog => {}
        }
        lost.cancel();
        if shutdown.is_cancelled() {
            return;
        }
    }
}
