//! The `saas-ledger` binary: `serve`, `migrate` and operations commands.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use api::config::{DatabaseArgs, ServeArgs};
use api::{Application, Config};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    /// Inspect projections.
    Projections {
        /// Database settings.
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Show every projection run with its position, head, lag and last error.
    Status,
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
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
                println!("SAAS_LEDGER_ADMIN_TOKEN is not set; this run's admin token (shown once): {token}");
            }
            tracing::info!(address = %app.local_addr(), "saas-ledger is listening");
            app.run_until(shutdown_signal()).await?;
        }
        Command::Migrate(database) => {
            commands::db::ensure_database(&database.database_url).await?;
            let pool = commands::db::connect(&database.database_url, 2).await?;
            commands::db::migrate(&pool).await?;
            println!("migrations applied");
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
    init_logging(cli.log_json);
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
