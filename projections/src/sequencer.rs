//! The sequencer gives committed events their global position.
//!
//! Writers cannot number events in commit order themselves: a number drawn inside a
//! transaction (a sequence, an identity) becomes visible when that transaction commits, and a
//! transaction that drew 7 may commit after one that drew 8. A reader that had already passed
//! 8 would never see 7. Readers that trust "max position" skip events this way; readers that
//! wait for every gap to close stall behind rolled-back numbers and long transactions.
//!
//! The server's own appends are numbered by the writer in the appending transaction, under the
//! head's row lock (`commands::appender`, `append_events`): their positions become visible with
//! the head that covers them. Events inserted any other way (a script, a migration, an
//! operator) arrive without a position; for those, positions are assigned after commit
//! instead. One sequencer at a time (the lock on `event_log_head`) takes the committed events
//! that have no position yet (their ids wait in `events_unsequenced`, filled by a trigger in
//! the appending transaction), in insertion order, and numbers them from the current head
//! onwards in a single transaction. Each
//! position is therefore larger than any assigned before it, the numbering has no gaps, and
//! what a transaction has not committed yet is simply numbered in a later round. Events of one
//! aggregate keep their order: event n+1 can only be written after event n committed, so it
//! is never numbered before it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many events one round numbers at most (keeps its transaction short).
const BATCH: i64 = 5_000;

/// How long an idle sequencer waits before looking for events other processes appended.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Numbers committed events; one per process, any number of processes.
#[derive(Debug)]
pub struct Sequencer {
    pool: PgPool,
    head: watch::Sender<i64>,
}

impl Sequencer {
    /// A sequencer over `pool`.
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool, head: watch::Sender::new(0) })
    }

    /// Tells this process's followers that the head is at least `head` (the writer numbered
    /// events itself and committed them).
    pub fn observed(&self, head: i64) {
        self.head.send_if_modified(|h| {
            let changed = *h < head;
            *h = (*h).max(head);
            changed
        });
    }

    /// Follows the head position (the highest position assigned, as this process knows it).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Numbers one batch of committed, unnumbered events; returns how many it numbered.
    pub async fn step(&self) -> Result<u64, sqlx::Error> {
        let started = std::time::Instant::now();
        // One statement (`migrations/0007_sequencer_round.sql`): take the head's lock, take the
        // queue up to its BATCH-th id, number those events in id order from the head, move the
        // head; all or nothing, in one round trip.
        let (numbered, new_head): (i64, i64) =
            sqlx::query_as("SELECT numbered, head FROM sequence_events($1)").bind(BATCH as i32).fetch_one(&self.pool).await?;
        let numbered = numbered as u64;
        if numbered > 0 {
            metrics::histogram!("saas_ledger_sequencer_round_seconds").record(started.elapsed().as_secs_f64());
            metrics::histogram!("saas_ledger_sequencer_round_events").record(numbered as f64);
        }
        self.head.send_if_modified(|h| {
            let changed = *h != new_head;
            *h = new_head;
            changed
        });
        Ok(numbered)
    }

    /// Numbers until nothing is left; returns how many it numbered.
    pub async fn drain(&self) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = self.step().await?;
            total += n;
            if n < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown`: polls for events inserted other than by the writer (scripts, other
    /// tools) and numbers them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.drain().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "sequencer round failed");
                }
            }
            let pause = if failures == 0 { IDLE_POLL } else { Duration::from_millis(100 * u64::from(failures.min(50))) };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
