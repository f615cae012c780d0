//! Executing commands against the Postgres event store.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` (load, handle, commit) with three
//! differences that the rest of the system relies on:
//! - it returns what was committed (the new state and the event envelopes with their
//!   sequence numbers), so callers can answer from the new state and wait for projections;
//! - it runs no inline queries: read models follow the global log (see `projections`), so a
//!   crash between commit and projection loses nothing;
//! - an optimistic-concurrency conflict re-runs the command against the fresh state a few
//!   times before giving up, because a concurrent change to the same aggregate is normal.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlx::PgPool;

use crate::{CommandContext, CommandError};

/// How often a command is re-run after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: u32 = 10;

/// Called after every successful commit (the sequencer's doorbell).
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;

/// The result of a committed command.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// The aggregate's state after the command.
    pub state: A,
    /// The events appended, with their sequence numbers (empty if the command changed nothing).
    pub events: Vec<EventEnvelope<A>>,
}

impl<A: Aggregate> Committed<A> {
    /// The aggregate's last sequence number after the command (`None` if nothing was appended).
    pub fn last_sequence(&self) -> Option<usize> {
        self.events.last().map(|e| e.sequence)
    }
}

/// One aggregate type's command executor on the shared event store.
pub struct AggregateStore<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
    on_commit: CommitHook,
}

impl<A> AggregateStore<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// An executor over `pool`'s `events` table (plain event store, no snapshots), with the
    /// upcasters that lift old event versions as they are read.
    pub fn new(pool: PgPool, services: A::Services, upcasters: Vec<Box<dyn EventUpcaster>>, on_commit: CommitHook) -> Self {
        let repo = PostgresEventRepository::new(pool);
        let store = PersistedEventStore::new_event_store(repo).with_upcasters(upcasters);
        Self { store, services, on_commit }
    }

    /// Runs `command` on aggregate `aggregate_id` and appends its events with `context`'s
    /// metadata, all or nothing. Counts it in `saas_ledger_commands_total{aggregate, outcome}`
    /// and its events in `saas_ledger_events_appended_total{aggregate}`.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        let started = std::time::Instant::now();
        let result = self.execute_with_retries(aggregate_id, command, context).await;
        let outcome = match &result {
            Ok(committed) if committed.events.is_empty() => "unchanged",
            Ok(committed) => {
                metrics::counter!("saas_ledger_events_appended_total", "aggregate" => A::TYPE).increment(committed.events.len() as u64);
                "committed"
            }
            Err(CommandError::Domain(_) | CommandError::Store(_)) => "rejected",
            Err(CommandError::Concurrency(_)) => "conflict",
            Err(CommandError::Internal(_)) => "error",
        };
        metrics::counter!("saas_ledger_commands_total", "aggregate" => A::TYPE, "outcome" => outcome).increment(1);
        metrics::histogram!("saas_ledger_command_duration_seconds", "aggregate" => A::TYPE).record(started.elapsed().as_secs_f64());
        result
    }

    async fn execute_with_retries(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        let metadata = context.to_metadata();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut loaded = self.store.load_aggregate(aggregate_id).await.map_err(Self::error)?;
            let sink = EventSink::default();
            loaded.aggregate.handle(command.clone(), &self.services, &sink).await.map_err(CommandError::Domain)?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed { state: loaded.aggregate, events: Vec::new() });
            }
            let state = loaded.aggregate.clone();
            match self.store.commit(events, loaded, metadata.clone()).await {
                Ok(events) => {
                    (self.on_commit)();
                    return Ok(Committed { state, events });
                }
                Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(aggregate_type = A::TYPE, aggregate_id, attempt, "optimistic concurrency conflict; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(Self::error(e)),
            }
        }
    }

    /// The aggregate's current state and last sequence, or `None` if it has no events.
    pub async fn load(&self, aggregate_id: &str) -> Result<Option<(A, usize)>, CommandError<A::Error>> {
        let loaded = self.store.load_aggregate(aggregate_id).await.map_err(Self::error)?;
        Ok((loaded.current_sequence > 0).then_some((loaded.aggregate, loaded.current_sequence)))
    }

    /// The aggregate's events, upcast to their current versions.
    pub async fn events(&self, aggregate_id: &str) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        self.store.load_events(aggregate_id).await.map_err(Self::error)
    }

    fn error(error: AggregateError<A::Error>) -> CommandError<A::Error> {
        CommandError::from_aggregate(error, A::TYPE)
    }
}

/// Exponential back-off with full jitter: 1-2 ms, 2-4 ms, ... capped at 100 ms.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(7);
    Duration::from_micros(rand::thread_rng().gen_range(base * 1000..=base * 2000).min(100_000))
}
