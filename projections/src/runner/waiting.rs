//! Waiting for the read models: how far the live runs are, waiting until they include a position
//! (read-your-writes, settling after a command), and the status of every run.

use super::*;

impl Projections {
    /// The lowest position that every live projection of this process is known to have
    /// applied (from the projector loops here; 0 for those led by another instance).
    pub fn applied(&self) -> i64 {
        self.live.values().map(|live| *live.borrow()).min().unwrap_or(0)
    }

    /// Waits until every live projection has applied `position` (read-your-writes), at most
    /// `timeout`; returns whether it got there.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        self.wait(position, None, timeout).await
    }

    /// [`Self::wait_for`] for the projections named `only` (what a command's next steps read,
    /// when every read of them waits for the rest by itself).
    pub async fn wait_for_some(&self, position: i64, only: &[&str], timeout: Duration) -> bool {
        self.wait(position, Some(only), timeout).await
    }

    async fn wait(&self, position: i64, only: Option<&[&str]>, timeout: Duration) -> bool {
        let chosen = |name: &str| only.is_none_or(|only| only.contains(&name));
        if self.live.iter().filter(|(name, _)| chosen(name)).all(|(_, live)| *live.borrow() >= position) {
            return true;
        }
        let _waiting = Waiting::start(self, only);
        let deadline = Instant::now() + timeout;
        for (_, live) in self.live.iter().filter(|(name, _)| chosen(name)) {
            let mut rx = live.subscribe();
            loop {
                if *rx.borrow_and_update() >= position {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return self.live_positions_reached(position, only).await;
                }
                // This process's projector moved: it runs the projection, and the next look is at
                // its progress again (no statement). Nothing moved here for a while: another
                // process may be running this projection, so the table is looked at.
                let step = left.min(Duration::from_millis(100));
                match tokio::time::timeout(step, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => tokio::time::sleep(step).await,
                    Err(_) => {}
                }
                if *rx.borrow() < position && self.live_positions_reached(position, only).await {
                    return true;
                }
            }
        }
        true
    }

    /// Whether every live run (of `only`, if given), as stored (possibly by another process),
    /// holds `position`: its checkpoint is there, or (a projection that reads only some
    /// aggregate types and moves its checkpoint over the others' events in bulk) nothing of its
    /// types lies in between.
    pub(super) async fn live_positions_reached(&self, position: i64, only: Option<&[&str]>) -> bool {
        let runs: Result<Vec<(String, i64)>, _> =
            sqlx::query_as("SELECT name, position FROM projection_runs WHERE status = 'live'").fetch_all(&self.pool).await;
        let Ok(runs) = runs else { return false };
        for (name, at) in runs {
            if at >= position || only.is_some_and(|only| !only.contains(&name.as_str())) {
                continue;
            }
            let Some(types) = self.projection(&name).and_then(|p| p.aggregate_types()) else {
                return false;
            };
            let pending: Result<bool, _> = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE position > $1 AND position <= $2 AND (aggregate_type = ANY($3)) IS TRUE)",
            )
            .bind(at)
            .bind(position)
            .bind(types)
            .fetch_one(&self.pool)
            .await;
            if !matches!(pending, Ok(false)) {
                return false;
            }
        }
        true
    }

    /// Numbers everything committed so far and returns the head position.
    pub async fn drain_and_head(&self) -> Result<i64, sqlx::Error> {
        self.sequencer.drain().await?;
        log::head(&self.pool).await
    }

    /// Every run that is not retired, with its position and lag.
    pub async fn status(&self) -> Result<Vec<RunInfo>, sqlx::Error> {
        let runs: Vec<RunInfo> = sqlx::query_as(
            "SELECT r.name, r.version, r.generation, r.status, r.position, h.position AS head, h.position - r.position AS lag,
                    r.last_error, r.last_error_position
             FROM projection_runs r CROSS JOIN event_log_head h
             WHERE r.status <> 'retired' ORDER BY r.name, r.generation",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut runs = runs;
        for run in &mut runs {
            run.leader = leader::holder(&self.pool, &format!("projection:{}", run.name)).await?;
        }
        Ok(runs)
    }
}

/// A caller waiting in [`Projections::wait_for`], counted for the projections it waits on
/// while it waits (see `follow`'s pace).
struct Waiting<'a>(&'a Projections, Vec<&'static str>);

impl<'a> Waiting<'a> {
    fn start(projections: &'a Projections, only: Option<&[&str]>) -> Self {
        let names: Vec<&'static str> =
            projections.waiters.keys().copied().filter(|name| only.is_none_or(|only| only.contains(name))).collect();
        for name in &names {
            let (waiting, arrived) = &projections.waiters[name];
            waiting.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            arrived.notify_waiters();
        }
        Self(projections, names)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            self.0.waiters[name].0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}
