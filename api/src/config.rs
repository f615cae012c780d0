//! Configuration, exactly as the contract's table names it: flags with environment fallbacks
//! for the database and the bind address, environment only for secrets (a secret on the
//! command line is visible to every user of the machine).

use std::time::Duration;

use clap::Args;

/// The default database: created on first start if missing.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/saas_ledger";

/// Where and how to connect (shared by every subcommand that touches the database).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL (`serve` and `migrate` create the database if it does not exist; the
    /// other commands expect it).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "SAAS_LEDGER_DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
}

/// `serve`'s settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to listen on.
    #[arg(long, env = "SAAS_LEDGER_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SAAS_LEDGER_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest a request may take, in seconds, before it is answered with 503.
    #[arg(long, env = "SAAS_LEDGER_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// How often the billing cycle runs by itself, in seconds.
    #[arg(long, env = "SAAS_LEDGER_BILLING_INTERVAL_SECS", default_value_t = 60)]
    pub billing_interval_secs: u64,
    /// Subscriptions a billing run advances at once (their commands share the group-commit
    /// writer's appends); 1 runs them one after another.
    #[arg(long, env = "SAAS_LEDGER_BILLING_CONCURRENCY", default_value_t = 64)]
    pub billing_concurrency: usize,
    /// A subscription is snapshotted when a command has replayed and appended this many of its
    /// events since its last snapshot (a command's cost stays flat as the stream grows); 0 turns
    /// snapshots off (every command replays the whole stream).
    #[arg(long, env = "SAAS_LEDGER_SNAPSHOT_EVERY", default_value_t = commands::snapshots::DEFAULT_EVERY)]
    pub snapshot_every: usize,
    /// Connections that write appends (group commit: concurrent commands share a statement).
    #[arg(long, env = "SAAS_LEDGER_APPEND_WRITERS", default_value_t = 2)]
    pub append_writers: usize,

    /// How long an API key's lookup is reused (ms). Revoking a key or changing a tenant's
    /// status answers only after this long, so no instance still honours the old answer.
    #[arg(long, env = "SAAS_LEDGER_AUTH_CACHE_MS", default_value_t = 1000)]
    pub auth_cache_ms: u64,

    /// Instances that share a key's requests: each enforces this share of a plan's rate limit
    /// (1 when the load balancer routes each key to one instance).
    #[arg(long, env = "SAAS_LEDGER_RATE_LIMIT_INSTANCES", default_value_t = 1)]
    pub rate_limit_instances: u32,

    /// Hot standbys to serve reads from (comma-separated Postgres URLs): a GET is served by one
    /// whose read models already reflect what the read must, else by the primary.
    #[arg(long, env = "SAAS_LEDGER_REPLICA_URLS", default_value = "")]
    pub replica_urls: String,

    /// NATS server to relay the event log to (JetStream); no relay when unset.
    #[arg(long, env = "SAAS_LEDGER_NATS_URL")]
    pub nats_url: Option<String>,
    /// The JetStream stream the relay publishes to.
    #[arg(long, env = "SAAS_LEDGER_NATS_STREAM", default_value = "SAAS_LEDGER")]
    pub nats_stream: String,
    /// The relay's first subject token.
    #[arg(long, env = "SAAS_LEDGER_NATS_SUBJECT_PREFIX", default_value = "saas-ledger")]
    pub nats_subject_prefix: String,

    /// `host:port` pairs (comma-separated) that webhook endpoints may target although they
    /// are not public (loopback, private, link-local), and over `http://`.
    #[arg(long, env = "SAAS_LEDGER_WEBHOOK_ALLOW_HOSTS", default_value = "")]
    pub webhook_allow_hosts: String,
    /// The file holding the key that seals webhook signing secrets, created on first start
    /// when `SAAS_LEDGER_SEALING_KEY` is not set.
    #[arg(long, env = "SAAS_LEDGER_SEALING_KEY_FILE", default_value = "saas-ledger-sealing.key")]
    pub sealing_key_file: std::path::PathBuf,
}

/// Everything the application needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres URL.
    pub database_url: String,
    /// Pool size.
    pub db_max_connections: u32,
    /// Listen address (`127.0.0.1:0` picks a free port).
    pub bind: String,
    /// The platform admin token; generated at start-up when `None`.
    pub admin_token: Option<String>,
    /// The payment provider's webhook secret; the webhook route answers 503 without it.
    pub webhook_secret: Option<String>,
    /// Whether `PUT /v1/admin/clock` is enabled (`SAAS_LEDGER_TEST_CLOCK=1`).
    pub test_clock: bool,
    /// Where the test clock starts (`None`: now); `saas-ledger demo` starts it a year ago.
    pub test_clock_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Request time limit.
    pub request_timeout: Duration,
    /// How often the server runs the billing cycle by itself.
    pub billing_interval: Duration,
    /// Subscriptions a billing run advances at once.
    pub billing_concurrency: usize,
    /// Events replayed and appended since a subscription's last snapshot that make a new one
    /// (0: no snapshots).
    pub snapshot_every: usize,
    /// Hot standbys reads may be served from.
    pub replica_urls: Vec<String>,
    /// The event relay to NATS JetStream, if configured.
    pub relay: Option<projections::relay::RelayConfig>,
    /// Connections that write appends.
    pub append_writers: usize,
    /// How long an API key's lookup is reused.
    pub auth_cache: Duration,
    /// Instances that share a key's requests (each enforces its share of the rate limit).
    pub rate_limit_instances: u32,
    /// Non-public `host:port` targets webhook endpoints may use.
    pub webhook_allow_hosts: projections::webhooks::AllowList,
    /// The key sealing webhook secrets (`SAAS_LEDGER_SEALING_KEY`, 64 hex digits), or `None`
    /// for the one in `sealing_key_file`.
    pub sealing_key: Option<String>,
    /// Where the sealing key is kept when `sealing_key` is `None` (created if missing).
    pub sealing_key_file: std::path::PathBuf,
}

impl Config {
    /// Resolves `serve`'s arguments and the secret-bearing environment variables.
    pub fn from_args(args: ServeArgs) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            database_url: args.database.database_url,
            db_max_connections: args.database.db_max_connections,
            bind: args.bind,
            admin_token: env("SAAS_LEDGER_ADMIN_TOKEN"),
            webhook_secret: env("SAAS_LEDGER_WEBHOOK_SECRET"),
            test_clock: env("SAAS_LEDGER_TEST_CLOCK").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
            test_clock_start: None,
            max_body_bytes: args.max_body_bytes,
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            billing_interval: Duration::from_secs(args.billing_interval_secs.max(1)),
            billing_concurrency: args.billing_concurrency.clamp(1, 256),
            snapshot_every: args.snapshot_every,
            replica_urls: args.replica_urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect(),
            append_writers: args.append_writers.clamp(1, 8),
            auth_cache: Duration::from_millis(args.auth_cache_ms.min(60_000)),
            rate_limit_instances: args.rate_limit_instances.max(1),
            webhook_allow_hosts: projections::webhooks::AllowList::parse(&args.webhook_allow_hosts),
            sealing_key: env("SAAS_LEDGER_SEALING_KEY"),
            sealing_key_file: args.sealing_key_file,
            relay: args.nats_url.as_deref().map(|url| projections::relay::RelayConfig {
                stream: args.nats_stream.clone(),
                subject_prefix: args.nats_subject_prefix.clone(),
                ..projections::relay::RelayConfig::new(url)
            }),
        }
    }

    /// A configuration for `database_url` with every other setting at its default.
    pub fn for_database(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            db_max_connections: 32,
            bind: "127.0.0.1:0".to_owned(),
            admin_token: None,
            webhook_secret: None,
            test_clock: false,
            test_clock_start: None,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            billing_interval: Duration::from_secs(60),
            billing_concurrency: 64,
            snapshot_every: commands::snapshots::DEFAULT_EVERY,
            replica_urls: Vec::new(),
            relay: None,
            append_writers: 2,
            auth_cache: Duration::from_secs(1),
            rate_limit_instances: 1,
            webhook_allow_hosts: projections::webhooks::AllowList::default(),
            sealing_key: None,
            sealing_key_file: std::path::PathBuf::from("saas-ledger-sealing.key"),
        }
    }
}

/// The webhook sealing key: `config.sealing_key` (64 hex digits), or the one in
/// `config.sealing_key_file`, created there (readable by its owner only) on first start.
pub fn sealing_key(config: &Config) -> Result<[u8; 32], String> {
    let parse = |text: &str, from: &str| -> Result<[u8; 32], String> {
        let bytes = hex::decode(text.trim()).map_err(|_| format!("{from} must hold 64 hex digits"))?;
        bytes.try_into().map_err(|_| format!("{from} must hold 64 hex digits (32 bytes)"))
    };
    if let Some(key) = &config.sealing_key {
        return parse(key, "SAAS_LEDGER_SEALING_KEY");
    }
    let path = &config.sealing_key_file;
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => return parse(&text, &shown),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("cannot read {shown}: {e}")),
        Err(_) => {}
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, hex::encode(key).as_bytes()).map_err(|e| format!("cannot write {shown}: {e}"))?;
            tracing::warn!(file = %shown, "created the key that seals webhook secrets: keep it with the database's backups, apart from them");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(std::time::Duration::from_millis(50));
            parse(&std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?, &shown)
        }
        Err(e) => Err(format!("cannot create {shown}: {e}")),
    }
}
