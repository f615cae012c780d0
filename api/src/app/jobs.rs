//! Background work every instance runs beside the projectors: the billing loop (one instance
//! at a time, the leader of `billing-loop`) and housekeeping.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;

/// Runs the billing cycle as of the server's clock every `billing_interval`, so renewals, trial
/// ends and grace expiries happen without anyone asking. One instance at a time runs it (the
/// leader of `billing-loop`).
pub(crate) async fn billing_loop(state: AppState, shutdown: CancellationToken) {
    let interval = state.config().billing_interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match state.run_billing(state.now()).await {
            Ok(report) if !report.failures.is_empty() => tracing::warn!(?report, "billing run had failures"),
            Ok(report) => tracing::debug!(?report, "billing run"),
            Err(e) => tracing::error!(error = ?e, "billing run failed"),
        }
    }
}

/// Forgets expired idempotency records every few minutes.
pub(crate) async fn housekeeping(state: AppState, shutdown: CancellationToken) {
    loop {
        match crate::idempotency::expire(state.pool()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, "expired idempotency records deleted"),
            Err(e) => tracing::warn!(error = %e, "could not expire idempotency records"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}
