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
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, EventStore};
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
    pool: PgPool,
    upcasting: bool,
}

impl<A> AggregateStore<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    /// An executor over `pool`'s `events` table (plain event store, no snapshots), with the
    /// upcasters that lift old event versions as they are read.
    pub fn new(pool: PgPool, services: A::Services, upcasters: Vec<Box<dyn EventUpcaster>>, on_commit: CommitHook) -> Self {
        let upcasting = !upcasters.is_empty();
        let repo = PostgresEventRepository::new(pool.clone());
        let store = PersistedEventStore::new_event_store(repo).with_upcasters(upcasters);
        Self { store, services, on_commit, pool, upcasting }
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
            let state = loaded.aggregate;
            let events: Vec<EventEnvelope<A>> = events
                .into_iter()
                .enumerate()
                .map(|(i, payload)| EventEnvelope {
                    aggregate_id: aggregate_id.to_owned(),
                    sequence: loaded.current_sequence + i + 1,
                    payload,
                    metadata: metadata.clone(),
                })
                .collect();
            match self.append(&events).await {
                Ok(()) => {
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

    /// Runs one command on each of many *distinct* aggregates and appends all their events in
    /// one transaction: one load query and one commit for the lot instead of one each. Returns
    /// each command's outcome, in order. If the append fails as a whole (another writer
    /// appended to one of these aggregates meanwhile, or the database refused one event), none
    /// of it is kept and each command is run again on its own with [`Self::execute`], which
    /// gives every command its exact outcome. Aggregates read through upcasters always take
    /// that path (the batch load reads stored events as they are).
    pub async fn execute_batch(
        &self,
        commands: Vec<(String, A::Command)>,
        context: &CommandContext,
    ) -> Vec<Result<Committed<A>, CommandError<A::Error>>> {
        if self.upcasting || commands.len() < 2 {
            return self.execute_each(commands, context).await;
        }
        let started = std::time::Instant::now();
        match self.try_batch(&commands, context).await {
            Ok(outcomes) => {
                let appended: usize = outcomes.iter().filter_map(|o| o.as_ref().ok()).map(|c| c.events.len()).sum();
                if appended > 0 {
                    (self.on_commit)();
                    metrics::counter!("saas_ledger_events_appended_total", "aggregate" => A::TYPE).increment(appended as u64);
                }
                for outcome in &outcomes {
                    let outcome = match outcome {
                        Ok(c) if c.events.is_empty() => "unchanged",
                        Ok(_) => "committed",
                        Err(_) => "rejected",
                    };
                    metrics::counter!("saas_ledger_commands_total", "aggregate" => A::TYPE, "outcome" => outcome).increment(1);
                }
                metrics::histogram!("saas_ledger_command_duration_seconds", "aggregate" => A::TYPE).record(started.elapsed().as_secs_f64());
                outcomes
            }
            Err(e) => {
                tracing::debug!(aggregate_type = A::TYPE, error = %e, "batch append failed as a whole; running its commands one by one");
                self.execute_each(commands, context).await
            }
        }
    }

    /// Appends `events` (of one or more aggregates) in a single statement: atomic without a
    /// transaction around it, one round trip. A taken `(aggregate, sequence)` (another writer
    /// won the race) is a conflict, as in postgres-es.
    async fn append(&self, events: &[EventEnvelope<A>]) -> Result<(), AggregateError<A::Error>> {
        let mut columns = EventColumns::default();
        for event in events {
            columns.push(event).map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?;
        }
        columns.insert::<A>(&self.pool).await.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => AggregateError::AggregateConflict,
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => AggregateError::DatabaseConnectionError(Box::new(e)),
            _ => AggregateError::UnexpectedError(Box::new(e)),
        })
    }

    async fn execute_each(
        &self,
        commands: Vec<(String, A::Command)>,
        context: &CommandContext,
    ) -> Vec<Result<Committed<A>, CommandError<A::Error>>> {
        let mut outcomes = Vec::with_capacity(commands.len());
        for (id, command) in commands {
            outcomes.push(self.execute(&id, command, context).await);
        }
        outcomes
    }

    /// One load, the decisions, one multi-row insert; `Err` if the insert failed (nothing kept).
    async fn try_batch(
        &self,
        commands: &[(String, A::Command)],
        context: &CommandContext,
    ) -> Result<Vec<Result<Committed<A>, CommandError<A::Error>>>, sqlx::Error> {
        let ids: Vec<&str> = commands.iter().map(|(id, _)| id.as_str()).collect();
        let rows: Vec<(String, i64, String, String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
            "SELECT aggregate_id, sequence, event_type, event_version, payload, metadata
             FROM events WHERE aggregate_type = $1 AND aggregate_id = ANY($2) ORDER BY aggregate_id, sequence",
        )
        .bind(A::TYPE)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut loaded: std::collections::HashMap<String, (A, usize)> = std::collections::HashMap::new();
        for (aggregate_id, sequence, event_type, event_version, payload, metadata) in rows {
            let serialized = cqrs_es::persist::SerializedEvent {
                aggregate_id: aggregate_id.clone(),
                sequence: sequence as usize,
                aggregate_type: A::TYPE.to_owned(),
                event_type,
                event_version,
                payload,
                metadata,
            };
            let envelope = EventEnvelope::<A>::try_from(serialized).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let entry = loaded.entry(aggregate_id).or_insert_with(|| (A::default(), 0));
            entry.0.apply(envelope.payload);
            entry.1 = sequence as usize;
        }
        let metadata = context.to_metadata();
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut columns = EventColumns::default();
        for (id, command) in commands {
            let (mut aggregate, sequence) = loaded.remove(id).unwrap_or_else(|| (A::default(), 0));
            let sink = EventSink::default();
            if let Err(e) = aggregate.handle(command.clone(), &self.services, &sink).await {
                outcomes.push(Err(CommandError::Domain(e)));
                continue;
            }
            let events: Vec<EventEnvelope<A>> = sink
                .collect()
                .await
                .into_iter()
                .enumerate()
                .map(|(i, payload)| EventEnvelope {
                    aggregate_id: id.clone(),
                    sequence: sequence + i + 1,
                    payload,
                    metadata: metadata.clone(),
                })
                .collect();
            for event in &events {
                columns.push(event)?;
            }
            outcomes.push(Ok(Committed { state: aggregate, events }));
        }
        if !columns.aggregate_id.is_empty() {
            columns.insert::<A>(&self.pool).await?;
        }
        Ok(outcomes)
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

/// Events to append, column by column (bound as arrays).
#[derive(Default)]
struct EventColumns {
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<serde_json::Value>,
    metadata: Vec<serde_json::Value>,
}

impl EventColumns {
    fn push<A: Aggregate>(&mut self, event: &EventEnvelope<A>) -> Result<(), sqlx::Error> {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| sqlx::Error::Encode(Box::new(e)));
        self.aggregate_id.push(event.aggregate_id.clone());
        self.sequence.push(event.sequence as i64);
        self.event_type.push(event.payload.event_type());
        self.event_version.push(event.payload.event_version());
        self.payload.push(json(serde_json::to_value(&event.payload))?);
        self.metadata.push(json(serde_json::to_value(&event.metadata))?);
        Ok(())
    }

    /// One multi-row INSERT (the rows in order, so their ids, and so their positions, follow it).
    async fn insert<A: Aggregate>(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT $1, id, seq, event_type, event_version, payload, metadata
             FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
                  WITH ORDINALITY AS e(id, seq, event_type, event_version, payload, metadata, n)
             ORDER BY n",
        )
        .bind(A::TYPE)
        .bind(&self.aggregate_id)
        .bind(&self.sequence)
        .bind(&self.event_type)
        .bind(&self.event_version)
        .bind(&self.payload)
        .bind(&self.metadata)
        .execute(pool)
        .await?;
        Ok(())
    }
}

/// Exponential back-off with full jitter: 1-2 ms, 2-4 ms, ... capped at 100 ms.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(7);
    Duration::from_micros(rand::thread_rng().gen_range(base * 1000..=base * 2000).min(100_000))
}
