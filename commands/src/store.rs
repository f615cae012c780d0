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
use crate::snapshots::{self, SnapshotPolicy, Snapshots};
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
    snapshots: Option<Snapshotting<A>>,
}

/// An aggregate type's snapshots: the writer, when and under which version, what of a state
/// they keep, which commands need the whole stream instead, and a second copy of the upcasters
/// (the first belongs to the plain store).
struct Snapshotting<A: Aggregate> {
    pool: PgPool,
    writer: Snapshots,
    policy: SnapshotPolicy,
    compact: fn(&A) -> A,
    needs_history: fn(&A::Command) -> bool,
    upcasters: Vec<Box<dyn EventUpcaster>>,
}

/// How an aggregate type is snapshotted ([`AggregateStore::with_snapshots`]).
pub struct SnapshotRules<A: Aggregate> {
    /// When and under which state version.
    pub policy: SnapshotPolicy,
    /// What a snapshot keeps of a state (all of it: `Clone::clone`).
    pub compact: fn(&A) -> A,
    /// The commands that decide on more than [`Self::compact`] keeps: loaded from the whole
    /// stream.
    pub needs_history: fn(&A::Command) -> bool,
}

/// An aggregate as a command finds it.
struct Found<A> {
    state: A,
    sequence: usize,
    /// Events applied since the last snapshot (all of them without one).
    replayed: usize,
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
        Self { store, services, on_commit, appender, snapshots: None }
    }

    /// Loads this aggregate type through its snapshots and offers `writer` a new one under
    /// `rules` (see [`crate::snapshots`]). `upcasters` are the same as [`Self::new`]'s.
    pub fn with_snapshots(
        mut self,
        pool: PgPool,
        writer: Snapshots,
        rules: SnapshotRules<A>,
        upcasters: Vec<Box<dyn EventUpcaster>>,
    ) -> Self {
        let SnapshotRules { policy, compact, needs_history } = rules;
        self.snapshots = Some(Snapshotting { pool, writer, policy, compact, needs_history, upcasters });
        self
    }

    /// Whether `command` is decided on the state replayed from the whole stream.
    fn needs_history(&self, command: &A::Command) -> bool {
        self.snapshots.as_ref().is_some_and(|s| (s.needs_history)(command))
    }

    /// The aggregate's state and last sequence: through its snapshot when it has one, unless
    /// `whole` (then replayed from the whole stream).
    async fn find(&self, aggregate_id: &str, whole: bool) -> Result<Found<A>, CommandError<A::Error>> {
        if let Some(snapshotting) = self.snapshots.as_ref().filter(|_| !whole) {
            match snapshots::load::<A>(&snapshotting.pool, aggregate_id, snapshotting.policy.version, &snapshotting.upcasters).await {
                Ok(Some(loaded)) => return Ok(Found { state: loaded.state, sequence: loaded.sequence, replayed: loaded.replayed }),
                Ok(None) => {} // an unreadable snapshot: replay the whole stream below
                Err(error) => return Err(CommandError::Internal(error.to_string())),
            }
        }
        let loaded = self.store.load_aggregate(aggregate_id).await.map_err(Self::error)?;
        Ok(Found { state: loaded.aggregate, sequence: loaded.current_sequence, replayed: loaded.current_sequence })
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
            let Found { state: mut aggregate, sequence: current_sequence, replayed } = if assume_new {
                Found { state: A::default(), sequence: 0, replayed: 0 }
            } else {
                self.find(aggregate_id, self.needs_history(&command)).await?
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
                    if let Some(snapshotting) = &self.snapshots {
                        if snapshotting.policy.due(replayed, events.len()) {
                            let sequence = current_sequence + events.len();
                            let kept = (snapshotting.compact)(&aggregate);
                            snapshotting.writer.offer(aggregate_id, sequence, snapshotting.policy.version, &kept);
                        }
                    }
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

    /// Decides `command` on the new stream `aggregate_id` (its empty state) without appending:
    /// the caller appends it together with other new streams' first events in one group (one
    /// statement, all or nothing; see [`append_together`]). `Ok(None)` if the command appends
    /// nothing.
    pub async fn decide_new(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Option<Decided<A>>, CommandError<A::Error>> {
        let mut state = A::default();
        let sink = EventSink::default();
        state.handle(command, &self.services, &sink).await.map_err(CommandError::Domain)?;
        let metadata = context.to_metadata();
        let events: Vec<EventEnvelope<A>> = sink
            .collect()
            .await
            .into_iter()
            .enumerate()
            .map(|(i, payload)| EventEnvelope {
                aggregate_id: aggregate_id.to_owned(),
                sequence: i + 1,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        if events.is_empty() {
            return Ok(None);
        }
        let rows = events.iter().map(new_event).collect::<Result<Vec<_>, _>>().map_err(|e| CommandError::Internal(e.to_string()))?;
        Ok(Some(Decided { state, events, rows }))
    }

    /// A decided command as committed at `position` (the position of its own last event):
    /// reports the commit and counts it as [`Self::execute`] does.
    pub fn committed(&self, decided: Decided<A>, position: i64, started: std::time::Instant) -> Committed<A> {
        let types: Vec<String> = decided.events.iter().map(|e| e.payload.event_type()).collect();
        (self.on_commit)(position, &types);
        metrics::counter!("saas_ledger_events_appended_total", "aggregate" => A::TYPE).increment(decided.events.len() as u64);
        metrics::counter!("saas_ledger_commands_total", "aggregate" => A::TYPE, "outcome" => "committed").increment(1);
        metrics::histogram!("saas_ledger_command_duration_seconds", "aggregate" => A::TYPE).record(started.elapsed().as_secs_f64());
        Committed { state: decided.state, events: decided.events, position: Some(position) }
    }

    /// The group-commit writer this store appends through.
    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    /// The aggregate's current state and last sequence, or `None` if it has no events. Loaded
    /// through its snapshot, so what a snapshot leaves out may be partial (a subscription's
    /// invoice books): what commands that do not need it see.
    pub async fn load(&self, aggregate_id: &str) -> Result<Option<(A, usize)>, CommandError<A::Error>> {
        let found = self.find(aggregate_id, false).await?;
        Ok((found.sequence > 0).then_some((found.state, found.sequence)))
    }

    /// What `command` would append to aggregate `aggregate_id` now, decided on its current
    /// state by the same domain code, without appending anything (previews). `None` if the
    /// aggregate does not exist.
    pub async fn dry_run(&self, aggregate_id: &str, command: A::Command) -> Result<Option<(A, Vec<A::Event>)>, CommandError<A::Error>> {
        let found = self.find(aggregate_id, self.needs_history(&command)).await?;
        if found.sequence == 0 {
            return Ok(None);
        }
        let mut state = found.state;
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

/// A command decided on a new stream, not yet appended ([`AggregateStore::decide_new`]).
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    state: A,
    events: Vec<EventEnvelope<A>>,
    rows: Vec<NewEvent>,
}

impl<A: Aggregate> Decided<A> {
    /// How many events it appends.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it appends nothing (never: [`AggregateStore::decide_new`] answers `None` then).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Its rows, to append.
    pub fn rows(&self) -> &[NewEvent] {
        &self.rows
    }
}

/// What became of commands appended together ([`append_together`]).
#[derive(Debug)]
pub enum Together<E: std::error::Error> {
    /// All written; the position of the group's last event.
    At(i64),
    /// One of the streams exists after all: nothing written (decide them again one by one).
    Conflict,
    /// Refused as a whole (a trigger's rule), as the first command's error type.
    Refused(CommandError<E>),
}

/// Appends the rows of commands decided on new streams as one group: one statement, one commit,
/// all or nothing.
pub async fn append_together<E: std::error::Error>(appender: &Appender, rows: Vec<NewEvent>) -> Result<Together<E>, CommandError<E>> {
    match appender.append(rows).await.map_err(|e| CommandError::Internal(e.to_string()))? {
        Appended::At(position) => Ok(Together::At(position)),
        Appended::Conflict => Ok(Together::Conflict),
        Appended::Refused { state, message, detail } => Ok(Together::Refused(refusal(&state, &message, detail.as_deref()))),
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
