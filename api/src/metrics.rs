//! `GET /metrics` in Prometheus text format.
//!
//! Counters and histograms are recorded where things happen (`metrics` facade, one process-wide
//! Prometheus recorder): HTTP requests by method, route template and status
//! (`saas_ledger_http_requests_total`, `saas_ledger_http_request_duration_seconds`), commands
//! by aggregate and outcome and events appended (in `commands::store`), rate-limited requests.
//! Projection positions, lag and rebuild progress are read from the database at scrape time,
//! so every instance reports the same truth: `saas_ledger_log_head`,
//! `saas_ledger_projection_position{projection, generation, status}`, `..._lag`,
//! `saas_ledger_projection_failing` (1 while stuck on an event), and for runs still `building`
//! `saas_ledger_projection_rebuild_progress` (0 to 1).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;
use crate::error::ApiError;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's own metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// open file descriptors, threads, start time), read at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> = std::sync::LazyLock::new(metrics_process::Collector::default);

/// How often queued histogram samples are folded into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the process-wide recorder on first use and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("constant buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will only show what this one sees");
        }
        register();
        // Histogram samples wait in a queue until an upkeep folds them into their buckets; left
        // to scrapes alone, a process nobody scrapes kept every sample of every request.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".to_owned()).spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for /metrics");
        }
        handle
    })
}

/// The aggregates whose commands are counted, and how a command can end.
const AGGREGATES: [&str; 7] = ["Tenant", "Plan", "Subscription", "Resource", "Booking", "Usage", "UsageBatch"];
const OUTCOMES: [&str; 5] = ["committed", "unchanged", "rejected", "conflict", "error"];

/// Describes every metric (its `# HELP`) and registers its series where the labels are known
/// in advance, so that `/metrics` shows them from the start, at zero, rather than after their
/// first increment. (Request metrics are labelled by route and status: they appear with the
/// first request of each.)
fn register() {
    use metrics::{describe_counter, describe_histogram, Unit};
    PROCESS.describe();
    PROCESS.collect();
    describe_counter!("saas_ledger_http_requests_total", "HTTP requests answered, by method, route template and status");
    describe_histogram!("saas_ledger_http_request_duration_seconds", Unit::Seconds, "HTTP request latency, by method and route template");
    describe_counter!("saas_ledger_commands_total", "Commands handled, by aggregate and outcome");
    describe_histogram!("saas_ledger_command_duration_seconds", Unit::Seconds, "Time to decide, append and commit a command, by aggregate");
    describe_counter!("saas_ledger_events_appended_total", "Events appended to the log, by aggregate");
    describe_counter!("saas_ledger_rate_limited_total", "Requests refused with 429 RATE_LIMITED");
    describe_histogram!("saas_ledger_settle_duration_seconds", Unit::Seconds, "A command's wait for the read models after its commit");
    describe_histogram!("saas_ledger_append_flush_seconds", Unit::Seconds, "Time of one group-commit append (one statement and commit)");
    describe_histogram!("saas_ledger_append_flush_commands", "Commands sharing one group-commit append");
    describe_histogram!(
        "saas_ledger_sequencer_round_seconds",
        Unit::Seconds,
        "Time of a sequencer round (events inserted other than by the writer)"
    );
    describe_histogram!("saas_ledger_sequencer_round_events", "Events numbered by a sequencer round");
    describe_histogram!("saas_ledger_projection_batch_seconds", Unit::Seconds, "Time of one projector batch, by projection");
    describe_histogram!("saas_ledger_projection_batch_positions", "Positions one projector batch covers, by projection");
    describe_counter!("saas_ledger_audit_chained_ahead_events_total", "Audit entries chained ahead of their batch (catch-up, rebuilds)");
    describe_counter!(
        "saas_ledger_snapshots_total",
        "Snapshots of aggregate state written or dropped (a full queue, a failed write), by aggregate"
    );
    metrics::counter!("saas_ledger_rate_limited_total").increment(0);
    metrics::counter!("saas_ledger_audit_chained_ahead_events_total").increment(0);
    for outcome in ["written", "dropped"] {
        metrics::counter!("saas_ledger_snapshots_total", "aggregate" => "Subscription", "outcome" => outcome).increment(0);
    }
    for name in [
        "saas_ledger_settle_duration_seconds",
        "saas_ledger_append_flush_seconds",
        "saas_ledger_append_flush_commands",
        "saas_ledger_sequencer_round_seconds",
        "saas_ledger_sequencer_round_events",
    ] {
        let _ = metrics::histogram!(name);
    }
    for aggregate in AGGREGATES {
        metrics::counter!("saas_ledger_events_appended_total", "aggregate" => aggregate).increment(0);
        let _ = metrics::histogram!("saas_ledger_command_duration_seconds", "aggregate" => aggregate);
        for outcome in OUTCOMES {
            metrics::counter!("saas_ledger_commands_total", "aggregate" => aggregate, "outcome" => outcome).increment(0);
        }
    }
    for projection in projections::all() {
        let _ = metrics::histogram!("saas_ledger_projection_batch_seconds", "projection" => projection.name());
        let _ = metrics::histogram!("saas_ledger_projection_batch_positions", "projection" => projection.name());
    }
}

/// Records every request: count and latency by method, route template (not the raw path, so
/// ids do not explode the series) and status.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("saas_ledger_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("saas_ledger_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = handle();
    PROCESS.collect();
    handle.run_upkeep();
    let mut text = handle.render();
    text.push_str(&projection_gauges(&state).await?);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn projection_gauges(state: &AppState) -> Result<String, ApiError> {
    use std::fmt::Write;
    let runs = state.projections().status().await?;
    let head = runs.first().map_or(0, |r| r.head);
    let mut out = String::new();
    let _ = writeln!(out, "# HELP saas_ledger_log_head Position of the last event in the global log.");
    let _ = writeln!(out, "# TYPE saas_ledger_log_head gauge");
    let _ = writeln!(out, "saas_ledger_log_head {head}");
    let families = [
        ("saas_ledger_projection_position", "Last position a projection run applied."),
        ("saas_ledger_projection_lag", "Events a projection run is behind the log head."),
        ("saas_ledger_projection_failing", "1 while a projection run is stopped on a failing event."),
        ("saas_ledger_projection_rebuild_progress", "Share of the log a building (rebuilding) run has applied, 0 to 1."),
    ];
    for (name, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for run in &runs {
            let labels = format!(
                "projection=\"{}\",version=\"{}\",generation=\"{}\",status=\"{}\"",
                run.name, run.version, run.generation, run.status
            );
            let value = match name {
                "saas_ledger_projection_position" => run.position as f64,
                "saas_ledger_projection_lag" => run.lag as f64,
                "saas_ledger_projection_failing" => f64::from(u8::from(run.last_error.is_some())),
                _ if run.status == "building" => {
                    if run.head == 0 {
                        1.0
                    } else {
                        run.position as f64 / run.head as f64
                    }
                }
                _ => continue,
            };
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    Ok(out)
}
