//! `quota.threshold_reached` webhooks: after the read models have taken in a tenant's new
//! events, its quotas are read as `GET /v1/quota` answers them, and each metric at 80 % or 100 %
//! of its limit in its period is recorded once (`projections::webhooks::record_threshold`) and
//! delivered to the endpoints listening. Only tenants with events since the last round and with
//! an endpoint that listens (theirs or the platform's) are read. One instance at a time (leader
//! of `webhooks:quota`); its checkpoint is `webhooks:quota` (see `projections::checkpoint`).

use projections::checkpoint::Checkpoint;
use std::time::Duration;

use projections::webhooks::{quota_candidates, record_threshold, Threshold};
use tokio_util::sync::CancellationToken;

use crate::app::AppState;

/// The thresholds, in percent of a limit.
pub const THRESHOLDS: [u32; 2] = [80, 100];
/// How often a round runs.
const ROUND: Duration = Duration::from_millis(500);
/// Positions one step of a round covers.
const WINDOW: i64 = 50_000;

/// Runs rounds while this instance leads, until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    projections::leader::lead(state.pool().clone(), "webhooks:quota", shutdown, move |lost| {
        let state = state.clone();
        async move {
            loop {
                if let Err(e) = round(&state).await {
                    tracing::warn!(error = %e, "quota threshold round failed; retrying");
                }
                tokio::select! {
                    () = lost.cancelled() => return,
                    () = tokio::time::sleep(ROUND) => {}
                }
            }
        }
    })
    .await;
}

/// The thresholds of `limit` that `used` has reached.
pub fn reached(used: u64, limit: u64) -> impl Iterator<Item = u32> {
    THRESHOLDS.into_iter().filter(move |t| limit > 0 && used.saturating_mul(100) >= limit.saturating_mul(u64::from(*t)))
}

/// Reads the quotas of the tenants with new events, up to the head the read models cover.
async fn round(state: &AppState) -> Result<(), sqlx::Error> {
    let pool = state.pool();
    loop {
        let checkpoint = Checkpoint::fixed("webhooks:quota");
        let after = checkpoint.read(pool).await?;
        let (tenants, upto) = quota_candidates(pool, after, WINDOW).await?;
        if upto <= after {
            return Ok(());
        }
        let now = state.now();
        for tenant_id in tenants {
            let (lines, _) = commands::quota::report_at(pool, state.usage().definitions(), tenant_id, now).await?;
            for line in lines {
                let Some(limit) = line.limit else { continue };
                for threshold in reached(line.used_whole(), limit) {
                    let period = line.period_start.zip(line.period_end);
                    let mark = Threshold { tenant_id, metric: line.metric.clone(), threshold, limit, used: line.used_whole(), period };
                    record_threshold(pool, &mark, now).await?;
                }
            }
        }
        checkpoint.save(pool, upto).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn thresholds_are_reached_at_80_and_100_percent_of_a_limit() {
        assert_eq!(reached(7, 10).collect::<Vec<_>>(), Vec::<u32>::new());
        assert_eq!(reached(8, 10).collect::<Vec<_>>(), vec![80]);
        assert_eq!(reached(10, 10).collect::<Vec<_>>(), vec![80, 100]);
        assert_eq!(reached(12, 10).collect::<Vec<_>>(), vec![80, 100]);
        assert_eq!(reached(0, 0).collect::<Vec<_>>(), Vec::<u32>::new());
    }
}
