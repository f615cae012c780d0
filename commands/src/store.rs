//! Executing commands against the Postgres event store.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` (load, handle, commit) with four
//! differences that the rest of the system relies on:
//! - it returns what was committed (the new state, the event envelopes with their sequence
//!   numbers, and the log position of the last one), so callers can answer from the new state
//!   and tell the client its `Ledger-Position`;
//! - appends go through the process's group-commit writer ([`crate::appender`]): concurrent
//!   commands share one statement and one commit, and are numbered in it;
//! - it runs no inline queries: read models follow the global log (see `projections`), so a
//!   crash between commit and projection loses nothing;
//! - an optimistic-concurrency conflict re-runs the command against the fresh state a few
//!   times before giving up, because a concurrent change to the same aggregate is normal.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlx::PgPool;

use crate::appender::{Appended, Appender, NewEvent};
use crate::{CommandContext, CommandError, StoreRejection};

/// How often a command is re-run after losing an optimistic-concurrency race.
const MAX_ATTEMPTS: u32 = 10;

/// Called after every successful commit with the position of its last event (the caller's
/// `Ledger-Position`) and the types of the events it appended.
pub type CommitHook = Arc<dyn Fn(i64, &[String]) + Send + Sync>;

/// The result of a committed command.
#[derive(Debug)]
pub struct Committed<A: Aggregate> {
    /// The aggregate's state after the command.
    pub state: A,
    /// The events appended, with their sequence numbers (empty if the command changed nothing).
    pub events: Vec<EventEnvelope<A>>,
    /// The log position of the last event appended (`None` if nothing was).
    pub position: Option<i64>,
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
    appender: Appender,
}

impl<A> AggregateStore<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// An executor over `pool`'s `events` table (plain event store, no snapshots), with the
    /// upcasters that lift old event versions as they are read.
    pub fn new(
        pool: PgPool,
        appender: Appender,
        services: A::Services,
        upcasters: Vec<Box<dyn EventUpcaster>>,
        on_commit: CommitHook,
    ) -> Self {
        let repo = PostgresEventRepository::new(pool);
        let store = PersistedEventStore::new_event_store(repo).with_upcasters(upcasters);
        Self { store, services, on_commit, appender }
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
        self.run(aggregate_id, command, context, false, &[], None).await
    }

    /// Like [`Self::execute`] for a stream that is almost always new (a fresh UUID, a usage
    /// fact's key): decides on the empty aggregate without reading the stream, and only if
    /// the stream turns out to exist (the append conflicts) loads it and decides again. Exactly
    /// the same outcome as `execute`, without the read in the common case.
    pub async fn execute_new(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        self.run(aggregate_id, command, context, true, &[], None).await
    }

    /// [`Self::execute_new`] for a command decided on a booking context: `guard` is the tenant
    /// and the version of its context stamp the command was decided on. If the stamp has moved
    /// on by the time the command is appended, nothing is written and the answer is
    /// [`CommandError::Store`] with code `BOOKING_CONTEXT_CHANGED` (decide again on a fresh
    /// context).
    pub async fn execute_new_guarded(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        guard: (uuid::Uuid, i64),
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        self.run(aggregate_id, command, context, true, &[], Some(guard)).await
    }

    /// [`Self::execute_new`] that also claims `claims` in `usage_keys`, all or nothing with the
    /// events. A claim already taken (by a batch, or as a fact's own stream) refuses the whole
    /// command: [`CommandError::Store`] with code `USAGE_KEY_RECORDED`, nothing written.
    pub async fn execute_new_claiming(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        claims: &[String],
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        self.run(aggregate_id, command, context, true, claims, None).await
    }

    async fn run(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        assume_new: bool,
        claims: &[String],
        guard: Option<(uuid::Uuid, i64)>,
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        let started = std::time::Instant::now();
        let result = self.execute_with_retries(aggregate_id, command, context, assume_new, claims, guard).await;
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
        mut assume_new: bool,
        claims: &[String],
        guard: Option<(uuid::Uuid, i64)>,
    ) -> Result<Committed<A>, CommandError<A::Error>> {
        let metadata = context.to_metadata();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (mut aggregate, current_sequence) = if assume_new {
                (A::default(), 0)
            } else {
                let loaded = self.store.load_aggregate(aggregate_id).await.map_err(Self::error)?;
                (loaded.aggregate, loaded.current_sequence)
            };
            let sink = EventSink::default();
            aggregate.handle(command.clone(), &self.services, &sink).await.map_err(CommandError::Domain)?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed { state: aggregate, events: Vec::new(), position: None });
            }
            let events: Vec<EventEnvelope<A>> = events
                .into_iter()
                .enumerate()
                .map(|(i, payload)| EventEnvelope {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence: current_sequence + i + 1,
                    payload,
                    metadata: metadata.clone(),
                })
                .collect();
            let mut rows =
                events.iter().map(new_event).collect::<Result<Vec<_>, _>>().map_err(|e| CommandError::Internal(e.to_string()))?;
            rows[0].claims = claims.to_vec();
            rows[0].guard = guard;
            match self.appender.append(rows).await.map_err(|e| CommandError::Internal(e.to_string()))? {
                Appended::At(position) => {
                    let types: Vec<String> = events.iter().map(|e| e.payload.event_type()).collect();
                    (self.on_commit)(position, &types);
                    return Ok(Committed { state: aggregate, events, position: Some(position) });
                }
                Appended::Conflict if assume_new => {
                    // The stream exists after all: decide again on its real state, at once.
                    assume_new = false;
                    attempt -= 1;
                }
                Appended::Conflict if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(aggregate_type = A::TYPE, aggregate_id, attempt, "optimistic concurrency conflict; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Appended::Conflict => return Err(CommandError::Concurrency(A::TYPE)),
                Appended::Refused { state, message, detail } => return Err(refusal(&state, &message, detail.as_deref())),
            }
        }
    }

    /// The aggregate's current state and last sequence, or `None` if it has no events.
    pub async fn load(&self, aggregate_id: &str) -> Result<Option<(A, usize)>, CommandError<A::Error>> {
        let loaded = self.store.load_aggregate(aggregate_id).await.map_err(Self::error)?;
        Ok((loaded.current_sequence > 0).then_some((loaded.aggregate, loaded.current_sequence)))
    }

    /// What `command` would append to aggregate `aggregate_id` now, decided on its current
    /// state by the same domain code, without appending anything (previews). `None` if the
    /// aggregate does not exist.
    pub async fn dry_run(&self, aggregate_id: &str, command: A::Command) -> Result<Option<(A, Vec<A::Event>)>, CommandError<A::Error>> {
        let Some((mut state, _)) = self.load(aggregate_id).await? else { return Ok(None) };
        let sink = cqrs_es::event_sink::EventSink::default();
        state.handle(command, &self.services, &sink).await.map_err(CommandError::Domain)?;
        Ok(Some((state, sink.collect().await)))
    }

    /// The aggregate's events, upcast to their current versions.
    pub async fn events(&self, aggregate_id: &str) -> Result<Vec<EventEnvelope<A>>, CommandError<A::Error>> {
        self.store.load_events(aggregate_id).await.map_err(Self::error)
    }

    fn error(error: AggregateError<A::Error>) -> CommandError<A::Error> {
        CommandError::from_aggregate(error, A::TYPE)
    }
}

/// An envelope as the writer stores it.
fn new_event<A: Aggregate>(event: &EventEnvelope<A>) -> Result<NewEvent, serde_json::Error> {
    Ok(NewEvent {
        aggregate_type: A::TYPE,
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence as i64,
        event_type: event.payload.event_type(),
        event_version: event.payload.event_version(),
        payload: serde_json::value::to_raw_value(&event.payload)?,
        metadata: serde_json::value::to_raw_value(&event.metadata)?,
        claims: Vec::new(),
        guard: None,
    })
}

/// A command's refusal by the database (`SLxxx` from our triggers become typed rejections).
fn refusal<E: std::error::Error>(state: &str, message: &str, detail: Option<&str>) -> CommandError<E> {
    match StoreRejection::from_parts(state, message, detail) {
        Some(rejection) => CommandError::Store(rejection),
        None => CommandError::Internal(format!("the database refused the append ({state}): {message}")),
    }
}

/// Exponential back-off with full jitter: 1-2 ms, 2-4 ms, ... capped at 100 ms.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(7);
    Duration::from_micros(rand::thread_rng().gen_range(base * 1000..=base * 2000).min(100_000))
}
