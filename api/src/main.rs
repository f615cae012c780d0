//! The `saas-ledger` binary: `serve`, `migrate` and operations commands.
// No unsafe code, except the allocator's options below (a symbol jemalloc reads at start-up).
#![deny(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use api::config::{DatabaseArgs, ServeArgs};
use api::{Application, Config};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: under batch appends glibc spent a noticeable share of the
/// machine's CPU freeing and consolidating small blocks (bench/results/design-measurements.md).
/// The benchmark declares the same allocator, since it runs the server in its own process.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): two arenas rather than four per CPU, and freed pages given back to the OS
/// after 1 s rather than 10 s. With eight arenas, memory freed in one arena (a projector's
/// batch chained on a blocking thread, say) was kept for ten seconds while the others grew,
/// and the peak RSS with it (bench/results/design-measurements.md).
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:2,dirty_decay_ms:1000\0";

/// saas-ledger: the event-sourced commercial core of a multi-tenant SaaS platform.
#[derive(Debug, Parser)]
#[command(name = "saas-ledger", version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "SAAS_LEDGER_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (creates the database and applies migrations first).
    Serve(ServeArgs),
    /// Create the database if needed and apply migrations, then exit.
    Migrate(DatabaseArgs),
    /// Print a tenant's history in order, for audits.
    Replay {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        /// The tenant's code.
        #[arg(long)]
        tenant: String,
        /// Only events that occurred at or after this instant (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events that occurred before this instant (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Only one aggregate: `TYPE:ID` (e.g. `Subscription:0193...`).
        #[arg(long)]
        aggregate: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "ndjson")]
        format: ReplayFormat,
    },
    /// Re-bill the real history of `[from, to)` under candidate plans and print actual against
    /// simulated revenue (as `POST /v1/admin/simulations`); writes nothing.
    Simulate {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        /// Invoices issued at or after this instant count (RFC 3339).
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// Invoices issued before this instant count (RFC 3339).
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
        /// A JSON file with an array of plan bodies as for `POST /v1/plans` (`[]`: the real
        /// catalog, which reproduces every invoice).
        #[arg(long)]
        plans: std::path::PathBuf,
        /// Only this tenant (code or id); repeat for more.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Print the result as JSON (as the API's `result`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Fill an empty database with a year of believable history through the real commands (on
    /// a test clock started a year ago), so that the console, the analytics and the simulations
    /// have something to show. Refuses a database that has tenants.
    Demo {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        /// The seed of the choices (same seed, same history).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Tenants signed up over the year.
        #[arg(long, default_value_t = 200)]
        tenants: usize,
        /// Register webhook endpoints at this URL (the platform's, for every event, and every
        /// tenth tenant's, for its invoices); its `host:port` is allowed even on a private
        /// address or over `http://`. None without it.
        #[arg(long)]
        webhook_url: Option<String>,
    },
    /// The platform admin's credential (when `SAAS_LEDGER_ADMIN_TOKEN` is not set).
    AdminToken {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Inspect and rebuild projections.
    Projections {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminTokenCommand {
    /// Replace the stored admin token with a new one and print it; the old one stops working
    /// on every instance within `SAAS_LEDGER_AUTH_CACHE_MS` (1 s by default).
    Rotate,
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Show every projection run with its position, head, lag and last error.
    Status,
    /// Rebuild a projection (or `all`) from position 0 beside the live one, with progress, and
    /// swap it in when it has caught up. Reads keep being served from the live one meanwhile.
    Rebuild {
        /// A projection name, or `all`.
        name: String,
    },
}

/// How `replay` prints events.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReplayFormat {
    /// One JSON event per line (as `GET /v1/events`).
    Ndjson,
    /// Aligned columns under a header, with a one-line summary per event (ids longer than
    /// their column end in `…`; `ndjson` has them whole).
    Table,
}

/// Logs to stderr, filtered by `RUST_LOG`; without it, `default` (the server logs what it does,
/// commands that draw a progress bar only warnings, so no line breaks into the bar).
fn init_logging(json: bool, default: &str) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: draining requests");
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Serve(args) => {
            let app = Application::build(Config::from_args(args)).await?;
            if let Some(token) = app.generated_admin_token() {
                let line = "=".repeat(76);
                println!(
                    "{line}\n  The platform admin token, generated at this first start (shown this once;\n  only its hash is stored, and restarts keep it):\n\n    {token}\n\n  Replace it with `saas-ledger admin-token rotate`; SAAS_LEDGER_ADMIN_TOKEN overrides it.\n{line}"
                );
            }
            tracing::info!(address = %app.local_addr(), "saas-ledger is listening");
            app.run_until(shutdown_signal()).await?;
        }
        Command::Demo { database, seed, tenants, webhook_url } => {
            let mut config = Config::for_database(&database.database_url);
            config.test_clock = true;
            config.test_clock_start = Some(chrono::Utc::now() - chrono::Duration::days(365));
            // The demo runs billing itself, month by month.
            config.billing_interval = std::time::Duration::from_secs(24 * 3600);
            if let Some(url) = &webhook_url {
                let uri: axum::http::Uri = url.parse().map_err(|e| format!("--webhook-url {url}: {e}"))?;
                let host = uri.host().ok_or_else(|| format!("--webhook-url {url}: no host"))?;
                let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
                config.webhook_allow_hosts = projections::webhooks::AllowList::parse(&format!("{host}:{port}"));
            }
            let app = Application::build(config).await?;
            if let Some(token) = app.generated_admin_token() {
                println!("The platform admin token, generated now (shown this once): {token}");
            }
            let started = std::time::Instant::now();
            let report = api::demo::run(app.state(), api::demo::DemoOptions { seed, tenants, webhook_url })
                .await
                .map_err(|e| format!("{}: {}", e.code, e.message))?;
            println!(
                "A year of history in {:.0} s: {} tenants, {} invoices issued by the billing runs (besides those of sign-ups; {} paid by hand, {} credit notes), {} usage facts, {} bookings, {} plan changes, {} cancellations, {} webhook endpoints; {} requests refused by the rules",
                started.elapsed().as_secs_f64(),
                report.tenants,
                report.invoices_issued,
                report.invoices_paid,
                report.credit_notes,
                report.usage_facts,
                report.bookings,
                report.plan_changes,
                report.cancellations,
                report.webhook_endpoints,
                report.refused
            );
            app.run_until(std::future::ready(())).await?;
        }
        Command::AdminToken { database, command: AdminTokenCommand::Rotate } => {
            let pool = commands::db::connect(&database.database_url, 1).await?;
            let token = api::admin_token::rotate(&pool).await?;
            if std::env::var_os("SAAS_LEDGER_ADMIN_TOKEN").is_some() {
                eprintln!("note: SAAS_LEDGER_ADMIN_TOKEN is set here; servers started with it ignore the stored token");
            }
            println!("{token}");
        }
        Command::Migrate(database) => {
            commands::db::ensure_database(&database.database_url).await?;
            let pool = commands::db::connect(&database.database_url, 2).await?;
            commands::db::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Projections { database, command: ProjectionsCommand::Rebuild { name } } => {
            let pool = commands::db::connect(&database.database_url, 4).await?;
            let projections = projections::Projections::new(pool.clone(), projections::Sequencer::new(pool), projections::all());
            if name != "all" && !projections.names().contains(&name.as_str()) {
                return Err(format!("no projection named {name}; known: {}", projections.names().join(", ")).into());
            }
            for (name, generation) in projections.rebuild(&name).await? {
                let bar = indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template("{msg:<12} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}")?
                        .progress_chars("=> "),
                );
                bar.set_message(name.clone());
                let started = std::time::Instant::now();
                let position = projections
                    .build(&name, generation, |position, head| {
                        bar.set_length(head.max(0) as u64);
                        bar.set_position(position.max(0) as u64);
                    })
                    .await?;
                bar.finish();
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "{name}: generation {generation} is live at position {position} ({:.0} events/s)",
                    position as f64 / seconds.max(1e-9)
                );
            }
        }
        Command::Replay { database, tenant, from, to, aggregate, format } => {
            let pool = commands::db::connect(&database.database_url, 2).await?;
            let filter = api::cli::ReplayFilter { tenant_code: tenant, from, to, aggregate, table: matches!(format, ReplayFormat::Table) };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match api::cli::replay(&pool, &filter, &mut out).await.and_then(|()| out.flush().map_err(Into::into)) {
                // A reader that went away (`| head`) ends the replay, quietly.
                Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
                other => other?,
            }
        }
        Command::Simulate { database, from, to, plans, tenants, json } => {
            if to <= from {
                return Err("--to must be after --from".into());
            }
            let plans = api::cli::candidate_plans(&std::fs::read_to_string(&plans).map_err(|e| format!("{}: {e}", plans.display()))?)?;
            let pool = commands::db::connect(&database.database_url, 4).await?;
            let tenants = if tenants.is_empty() { None } else { Some(api::cli::tenant_ids(&pool, &tenants).await?) };
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template("simulating [{bar:40}] {pos}/{len} subscriptions  {per_sec}  ETA {eta}")?
                    .progress_chars("=> "),
            );
            let input = projections::simulation::SimulationInput { from, to, plans, tenants };
            let progress = |done: usize, total: usize| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            };
            let started = std::time::Instant::now();
            let result = projections::simulation::simulate(&pool, &input, &progress).await?;
            bar.finish_and_clear();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if json {
                serde_json::to_writer_pretty(&mut out, &result)?;
                writeln!(out)?;
            } else {
                api::cli::print_simulation(&result, &mut out)?;
                writeln!(out, "({:.1} s)", started.elapsed().as_secs_f64())?;
            }
            out.flush()?;
        }
        Command::Projections { database, command: ProjectionsCommand::Status } => {
            let pool = commands::db::connect(&database.database_url, 2).await?;
            let projections = projections::Projections::new(pool.clone(), projections::Sequencer::new(pool), projections::all());
            println!(
                "{:<16} {:>7} {:>10} {:<9} {:>12} {:>12} {:>10}  last error",
                "projection", "version", "generation", "status", "position", "head", "lag"
            );
            for run in projections.status().await? {
                println!(
                    "{:<16} {:>7} {:>10} {:<9} {:>12} {:>12} {:>10}  {}",
                    run.name,
                    run.version,
                    run.generation,
                    serde_json::to_value(run.status)?.as_str().unwrap_or_default(),
                    run.position,
                    run.head,
                    run.lag,
                    run.last_error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Projections { command: ProjectionsCommand::Rebuild { .. }, .. } | Command::Simulate { .. } | Command::Demo { .. }
    );
    init_logging(cli.log_json, if quiet { "warn" } else { "info,sqlx=warn,tower_http=info" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saas-ledger: {e}");
            ExitCode::FAILURE
        }
    }
}
