//! Following the primary of a replicated Postgres. A `DATABASE_URL` may list several hosts in
//! libpq's multi-host form (`postgres://user@h1:5432,h2:5433/db`); the server writes to the one
//! that accepts writes (`pg_is_in_recovery()` is false) and, when another one does after a
//! failover or switchover, moves every pool of the process to it by itself: a watch probes the
//! primary every [`PROBE_EVERY`], and when it is gone or has become a standby, looks for the new
//! one among the hosts, points each pool's future connections at it and has the pools drop every
//! connection made before the switch (checked as each is taken, without a round trip).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

/// How often the watch asks the primary whether it still is one.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long one probe of a host may take (connecting and asking).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The hosts of `url`, each as a URL of its own (libpq's multi-host form split; a single-host URL
/// is answered as it is). The user, the database and the parameters are every host's; the
/// `target_session_attrs` parameter is left out (the server always looks for the primary).
pub fn host_urls(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return vec![url.to_owned()] };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    if !hosts.contains(',') {
        return vec![url.to_owned()];
    }
    let tail = without_target_session_attrs(tail);
    hosts.split(',').filter(|h| !h.is_empty()).map(|host| format!("{scheme}://{userinfo}{host}{tail}")).collect()
}

fn without_target_session_attrs(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else { return tail.to_owned() };
    let kept: Vec<&str> = query.split('&').filter(|p| !p.starts_with("target_session_attrs=")).collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `host:port` of a single-host URL (for logs and the cluster view).
pub fn host_of(url: &str) -> String {
    PgConnectOptions::from_str(url).map(|o| format!("{}:{}", o.get_host(), o.get_port())).unwrap_or_else(|_| url.to_owned())
}

/// The probe's connect options for the host of `url`: the maintenance database `postgres` (the
/// ledger's own may not exist yet when the server first starts).
fn probe_options(url: &str) -> Option<PgConnectOptions> {
    Some(PgConnectOptions::from_str(url).ok()?.database("postgres").application_name("saas-ledger-probe"))
}

/// Whether the host of the single-host `url` answers and accepts writes (`None`: it did not
/// answer within the probe's time).
pub async fn accepts_writes(url: &str) -> Option<bool> {
    let options = probe_options(url)?;
    let probe = async {
        let mut conn = options.connect().await.ok()?;
        let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await.ok()?;
        let _ = conn.close().await;
        Some(!recovering)
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.ok().flatten()
}

/// Whether the primary at `url` still is one, asked on the watch's own connection `probe`
/// (made if there is none; dropped on any failure).
async fn primary_still(probe: &mut Option<sqlx::PgConnection>, url: &str) -> bool {
    let ask = async {
        if probe.is_none() {
            let options = probe_options(url)?;
            *probe = Some(options.connect().await.ok()?);
        }
        let conn = probe.as_mut()?;
        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(conn).await.ok()
    };
    match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(Some(recovering)) => !recovering,
        _ => {
            *probe = None;
            false
        }
    }
}

/// The first of `hosts` that accepts writes, looked for until `patience` has passed.
pub async fn find_primary(hosts: &[String], patience: Duration) -> Result<usize, sqlx::Error> {
    let started = Instant::now();
    loop {
        for (i, host) in hosts.iter().enumerate() {
            if accepts_writes(host).await == Some(true) {
                return Ok(i);
            }
        }
        if started.elapsed() >= patience {
            let listed = hosts.iter().map(|h| host_of(h)).collect::<Vec<_>>().join(", ");
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("none of the database hosts accepts writes ({listed})"),
            )));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// When each process's pools last moved to another host, for the pools' `before_acquire` check.
#[derive(Clone)]
pub struct Switches {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last switch (0: none yet).
    last: Arc<AtomicU64>,
}

impl Default for Switches {
    fn default() -> Self {
        Self { epoch: Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }
}

impl Switches {
    /// Whether a connection of `age` was made before the last switch (to the old primary).
    pub fn predates_switch(&self, age: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        last > 0 && age > self.epoch.elapsed().saturating_sub(Duration::from_millis(last))
    }

    fn switched(&self) {
        self.last.store((self.epoch.elapsed().as_millis() as u64).max(1), Ordering::Relaxed);
    }
}

/// A pool that follows the primary: the pool and the session settings its connections add to
/// the main pool's (the options are rebuilt from the new host's URL with them).
struct Follower {
    pool: PgPool,
    extra: Vec<(String, String)>,
}

/// One process's view of a replicated database: its hosts, the current primary, and the pools
/// that follow it.
pub struct Cluster {
    hosts: Vec<String>,
    primary: Mutex<usize>,
    application_name: String,
    base: fn(&str, &str) -> Result<PgConnectOptions, sqlx::Error>,
    switches: Switches,
    followers: Mutex<Vec<Follower>>,
    /// How many times the pools moved to another host.
    moves: AtomicU64,
}

/// The clusters of this process, by the `application_name` of their pools' sessions (unique per
/// server instance), so that pools derived from a main pool follow it too.
fn clusters() -> &'static Mutex<HashMap<String, Weak<Cluster>>> {
    static CLUSTERS: OnceLock<Mutex<HashMap<String, Weak<Cluster>>>> = OnceLock::new();
    CLUSTERS.get_or_init(Default::default)
}

impl Cluster {
    /// The cluster of `hosts` whose primary is `hosts[primary]`, its main pool `pool`; `base`
    /// makes a host's connect options for an application name.
    pub(crate) fn new(
        hosts: Vec<String>,
        primary: usize,
        pool: &PgPool,
        application_name: &str,
        base: fn(&str, &str) -> Result<PgConnectOptions, sqlx::Error>,
        switches: Switches,
    ) -> Arc<Self> {
        let cluster = Arc::new(Self {
            hosts,
            primary: Mutex::new(primary),
            application_name: application_name.to_owned(),
            base,
            switches,
            followers: Mutex::new(vec![Follower { pool: pool.clone(), extra: Vec::new() }]),
            moves: AtomicU64::new(0),
        });
        let mut all = clusters().lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, c| c.strong_count() > 0);
        all.insert(application_name.to_owned(), Arc::downgrade(&cluster));
        cluster
    }

    /// The cluster the pool `pool` belongs to, if its database has several hosts.
    pub fn of(pool: &PgPool) -> Option<Arc<Self>> {
        let name = pool.connect_options().get_application_name()?.to_owned();
        clusters().lock().unwrap_or_else(|p| p.into_inner()).get(&name).and_then(Weak::upgrade)
    }

    /// Has `pool` (made from this cluster's main pool, adding `extra` session settings) follow
    /// the primary too.
    pub fn add(&self, pool: &PgPool, extra: &[(&str, &str)]) {
        let extra = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.followers.lock().unwrap_or_else(|p| p.into_inner()).push(Follower { pool: pool.clone(), extra });
    }

    /// `host:port` of every host, and of the primary.
    pub fn hosts(&self) -> (Vec<String>, String) {
        let primary = *self.primary.lock().unwrap_or_else(|p| p.into_inner());
        (self.hosts.iter().map(|h| host_of(h)).collect(), host_of(&self.hosts[primary]))
    }

    /// How many times the pools moved to another primary.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Watches the primary until the main pool is closed: see the module's documentation. The
    /// watch keeps one connection of its own to the primary and asks it every [`PROBE_EVERY`];
    /// it holds the cluster (and so its pools) until then.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut probe: Option<sqlx::PgConnection> = None;
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let main = cluster.followers.lock().unwrap_or_else(|p| p.into_inner())[0].pool.clone();
                if main.is_closed() {
                    return;
                }
                let current = *cluster.primary.lock().unwrap_or_else(|p| p.into_inner());
                if primary_still(&mut probe, &cluster.hosts[current]).await {
                    continue;
                }
                probe = None;
                tracing::warn!(host = %host_of(&cluster.hosts[current]), "the primary does not accept writes; looking for the new one");
                // Every host in turn (the old one last) until one accepts writes.
                let order: Vec<usize> = (1..=cluster.hosts.len()).map(|k| (current + k) % cluster.hosts.len()).collect();
                let found = loop {
                    if main.is_closed() {
                        return;
                    }
                    let mut found = None;
                    for &i in &order {
                        if accepts_writes(&cluster.hosts[i]).await == Some(true) {
                            found = Some(i);
                            break;
                        }
                    }
                    match found {
                        Some(i) => break i,
                        None => tokio::time::sleep(PROBE_EVERY).await,
                    }
                };
                if found != current {
                    cluster.move_to(found);
                }
            }
        })
    }

    fn move_to(&self, primary: usize) {
        let url = &self.hosts[primary];
        for follower in self.followers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            match (self.base)(url, &self.application_name) {
                Ok(options) => {
                    follower.pool.set_connect_options(options.options(follower.extra.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
                }
                Err(e) => tracing::error!(error = %e, "the new primary's URL does not parse"),
            }
        }
        *self.primary.lock().unwrap_or_else(|p| p.into_inner()) = primary;
        self.switches.switched();
        self.moves.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(host = %host_of(url), "following the new primary");
    }
}

/// Whether `error` says the database cannot take the statement now (it is gone, shutting down,
/// starting, or a standby), rather than that the statement is wrong: a 503 to the client.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|c| unavailable_state(&c)),
        _ => false,
    }
}

/// SQLSTATEs of a database that cannot take writes now: connection exceptions (08), shutdown
/// and start-up (57P01–57P03), a read-only (standby) transaction (25006).
pub fn unavailable_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
}

/// The same judgement on an error already turned into text (the message sqlx gives each of
/// those errors), for causes that travelled as strings.
pub fn unavailable_text(message: &str) -> bool {
    const SIGNS: [&str; 15] = [
        "error communicating with database",
        // sqlx's protocol errors: a connection that a proxy (HAProxy with no primary behind it)
        // accepted and then closed answers garbage to the first message.
        "encountered unexpected or invalid data",
        "pool timed out while waiting for an open connection",
        "attempted to acquire a connection on a closed pool",
        "in a read-only transaction",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
        "connection refused",
        "connection reset by peer",
        "broken pipe",
        "unexpected end of file",
        "none of the database hosts accepts writes",
    ];
    let lower = message.to_lowercase();
    SIGNS.iter().any(|s| lower.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_is_split_into_one_url_per_host() {
        assert_eq!(
            host_urls("postgres://postgres:pw@127.0.0.1:5432,10.0.0.2:5433/ledger?sslmode=disable&target_session_attrs=read-write"),
            ["postgres://postgres:pw@127.0.0.1:5432/ledger?sslmode=disable", "postgres://postgres:pw@10.0.0.2:5433/ledger?sslmode=disable"]
        );
        assert_eq!(host_urls("postgresql://h1,h2/db"), ["postgresql://h1/db", "postgresql://h2/db"]);
        assert_eq!(host_urls("postgres://u@h1:1,h2:2?target_session_attrs=any"), ["postgres://u@h1:1", "postgres://u@h2:2"]);
        assert_eq!(host_urls("postgres://postgres@127.0.0.1:5432/db"), ["postgres://postgres@127.0.0.1:5432/db"]);
        assert_eq!(host_of("postgres://u@h2:2/db"), "h2:2");
    }

    #[test]
    fn a_connection_made_before_a_switch_is_dropped_and_one_made_after_is_kept() {
        let switches = Switches::default();
        assert!(!switches.predates_switch(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        switches.switched();
        assert!(switches.predates_switch(Duration::from_millis(15)));
        assert!(!switches.predates_switch(Duration::from_millis(0)));
    }

    #[test]
    fn the_errors_of_a_database_that_cannot_take_writes_are_told_from_others() {
        assert!(unavailable_state("25006") && unavailable_state("08006") && unavailable_state("57P01"));
        assert!(!unavailable_state("23505") && !unavailable_state("SL409"));
        assert!(unavailable_text("error returned from database: cannot execute INSERT in a read-only transaction"));
        assert!(unavailable_text("error communicating with database: Connection refused (os error 111)"));
        assert!(unavailable_text("encountered unexpected or invalid data: unexpected response from SSLRequest: 0x00"));
        assert!(!unavailable_text("error returned from database: duplicate key value violates unique constraint"));
    }
}
