//! Snapshots of our own: a command's cost stays flat as its aggregate's stream grows.
//!
//! cqrs-es 0.5's snapshot modes apply events twice, so the store never uses them. This is a
//! cache beside the `events` table (`snapshots`, migration 0021), never a source of truth:
//! - **Reading** ([`load`]): one statement returns the aggregate's snapshot (if it has one of the
//!   state's current [`SnapshotPolicy::version`]) and the events after it; the state is the
//!   snapshot with those events applied. A snapshot of another version, or one that no longer
//!   deserializes, is ignored and the whole stream replayed, so deleting snapshots is always safe.
//! - **Writing** ([`Snapshots::offer`]): after a commit, when the command replayed and appended
//!   at least [`SnapshotPolicy::every`] events since the last snapshot, the new state is handed
//!   to a background writer that upserts snapshots in batches (one statement for many commands,
//!   never in a command's transaction, an older snapshot never over a newer one). A snapshot that
//!   is lost (a crash, a full queue) only means a longer replay next time.
//!
//! Bump the state's version whenever `apply` would now give a different state for the same
//! events (a fix in an event's effect, a new field derived from old events): snapshots taken by
//! the old code are then ignored. A change of the state's shape that serde cannot read is caught
//! without a bump.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::Aggregate;
use sqlx::PgPool;
use tokio::sync::mpsc;

/// The server's default [`SnapshotPolicy::every`] (`SAAS_LEDGER_SNAPSHOT_EVERY`).
pub const DEFAULT_EVERY: usize = 16;

/// How many snapshots may wait for the writer before new ones are dropped.
const QUEUE: usize = 8192;
/// The most snapshots one upsert writes.
const BATCH: usize = 512;

/// When an aggregate type is snapshotted, and under which state version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot when a command has replayed and appended at least this many events since
    /// the last one.
    pub every: usize,
    /// The version of the state's meaning (see the module's documentation).
    pub version: i32,
}

impl SnapshotPolicy {
    /// Whether a command that replayed `replayed` events after the last snapshot (all of them if
    /// there is none) and appended `appended` leaves a state worth a snapshot.
    pub fn due(&self, replayed: usize, appended: usize) -> bool {
        appended > 0 && replayed + appended >= self.every
    }
}

/// A state taken after `sequence`, serialized, waiting for the writer.
#[derive(Debug)]
struct Taken {
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    version: i32,
    state: String,
}

/// The process's snapshot writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct Snapshots {
    tx: mpsc::Sender<Taken>,
}

impl Snapshots {
    /// Starts the background writer on `pool` (it ends when the last handle is dropped).
    pub fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(pool, rx));
        Self { tx }
    }

    /// Hands `state`, the state of `A` `aggregate_id` after `sequence`, to the writer. Never
    /// waits: with the queue full the snapshot is dropped (and counted).
    pub fn offer<A: Aggregate>(&self, aggregate_id: &str, sequence: usize, version: i32, state: &A) {
        let state = match serde_json::to_string(state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id, %error, "a state that does not serialize is not snapshotted");
                return;
            }
        };
        let taken = Taken { aggregate_type: A::TYPE, aggregate_id: aggregate_id.to_owned(), sequence: sequence as i64, version, state };
        if self.tx.try_send(taken).is_err() {
            metrics::counter!("saas_ledger_snapshots_total", "aggregate" => A::TYPE, "outcome" => "dropped").increment(1);
        }
    }
}

async fn write(pool: PgPool, mut rx: mpsc::Receiver<Taken>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // One row per aggregate in a statement (an upsert cannot touch a row twice): the newest.
        let mut newest: HashMap<(&'static str, String), Taken> = HashMap::with_capacity(batch.len());
        for taken in batch.drain(..) {
            let key = (taken.aggregate_type, taken.aggregate_id.clone());
            match newest.get(&key) {
                Some(kept) if kept.sequence >= taken.sequence => {}
                _ => {
                    newest.insert(key, taken);
                }
            }
        }
        let rows: Vec<Taken> = newest.into_values().collect();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match upsert(&pool, &rows).await {
                Ok(()) => {
                    for row in &rows {
                        metrics::counter!("saas_ledger_snapshots_total", "aggregate" => row.aggregate_type, "outcome" => "written")
                            .increment(1);
                    }
                    break;
                }
                Err(error) if attempt < 3 => {
                    tracing::debug!(%error, attempt, "writing snapshots failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(error) => {
                    tracing::warn!(%error, snapshots = rows.len(), "writing snapshots failed; they are dropped (the next commands replay longer)");
                    for row in &rows {
                        metrics::counter!("saas_ledger_snapshots_total", "aggregate" => row.aggregate_type, "outcome" => "dropped")
                            .increment(1);
                    }
                    break;
                }
            }
        }
    }
}

async fn upsert(pool: &PgPool, rows: &[Taken]) -> Result<(), sqlx::Error> {
    let types: Vec<&str> = rows.iter().map(|r| r.aggregate_type).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.aggregate_id.as_str()).collect();
    let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, sequence, version, state)
         SELECT t, i, s, v, st::json FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::text[]) AS u(t, i, s, v, st)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET sequence = EXCLUDED.sequence, version = EXCLUDED.version, state = EXCLUDED.state, taken_at = clock_timestamp()
          WHERE snapshots.sequence < EXCLUDED.sequence OR snapshots.version <> EXCLUDED.version",
    )
    .bind(&types)
    .bind(&ids)
    .bind(&sequences)
    .bind(&versions)
    .bind(&states)
    .execute(pool)
    .await?;
    Ok(())
}

/// An aggregate loaded through its snapshot.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The current state.
    pub state: A,
    /// Its last sequence (0: no events).
    pub sequence: usize,
    /// How many events were applied on top of the snapshot (all of them without one).
    pub replayed: usize,
}

/// Why a load through the snapshot did not give a state.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// An event did not deserialize.
    #[error("an event of {aggregate_type} {aggregate_id} at sequence {sequence} does not deserialize: {error}")]
    Event { aggregate_type: &'static str, aggregate_id: String, sequence: i64, error: serde_json::Error },
}

/// A row of [`load`]: part (0 the snapshot, 1 an event), sequence, event type and version,
/// the snapshot's state or the event's payload, the event's metadata (only for upcasting).
type LoadRow = (i32, i64, Option<String>, Option<String>, String, Option<String>);

/// Loads `A` `aggregate_id` from its snapshot of `version` and the events after it, in one
/// statement. `Ok(None)` when the snapshot exists but cannot be read: the caller replays the
/// whole stream instead.
pub async fn load<A: Aggregate>(
    pool: &PgPool,
    aggregate_id: &str,
    version: i32,
    upcasters: &[Box<dyn EventUpcaster>],
) -> Result<Option<Loaded<A>>, LoadError> {
    let rows: Vec<LoadRow> = sqlx::query_as(
        "WITH s AS (SELECT sequence, state FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $3)
         SELECT 0, s.sequence, NULL::text, NULL::text, s.state::text, NULL::text FROM s
         UNION ALL
         SELECT 1, e.sequence, e.event_type, e.event_version, e.payload::text, CASE WHEN $4 THEN e.metadata::text END FROM events e
          WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 AND e.sequence > coalesce((SELECT sequence FROM s), 0)
         ORDER BY 1, 2",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(version)
    .bind(!upcasters.is_empty())
    .fetch_all(pool)
    .await?;
    let mut rows = rows.into_iter().peekable();
    let (mut state, mut sequence) = match rows.peek() {
        Some((0, at, ..)) => {
            let at = *at;
            let Some((_, _, _, _, snapshot, _)) = rows.next() else { unreachable!("peeked") };
            match serde_json::from_str::<A>(&snapshot) {
                Ok(state) => (state, at as usize),
                Err(error) => {
                    tracing::warn!(aggregate_type = A::TYPE, aggregate_id, %error, "a snapshot does not deserialize; replaying the whole stream");
                    return Ok(None);
                }
            }
        }
        _ => (A::default(), 0),
    };
    let mut replayed = 0;
    for (_, at, event_type, event_version, payload, metadata) in rows {
        let event = decode::<A>(at, event_type, event_version, payload, metadata, aggregate_id, upcasters)
            .map_err(|error| LoadError::Event { aggregate_type: A::TYPE, aggregate_id: aggregate_id.to_owned(), sequence: at, error })?;
        state.apply(event);
        sequence = at as usize;
        replayed += 1;
    }
    Ok(Some(Loaded { state, sequence, replayed }))
}

fn decode<A: Aggregate>(
    sequence: i64,
    event_type: Option<String>,
    event_version: Option<String>,
    payload: String,
    metadata: Option<String>,
    aggregate_id: &str,
    upcasters: &[Box<dyn EventUpcaster>],
) -> Result<A::Event, serde_json::Error> {
    let (event_type, event_version) = (event_type.unwrap_or_default(), event_version.unwrap_or_default());
    if !upcasters.iter().any(|u| u.can_upcast(&event_type, &event_version)) {
        return serde_json::from_str(&payload);
    }
    let metadata = match metadata {
        Some(metadata) => serde_json::from_str(&metadata)?,
        None => serde_json::Value::Null,
    };
    let event = SerializedEvent::new(
        aggregate_id.to_owned(),
        sequence as usize,
        A::TYPE.to_owned(),
        event_type,
        event_version,
        serde_json::from_str(&payload)?,
        metadata,
    );
    let event = upcasters.iter().fold(event, |event, upcaster| {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            upcaster.upcast(event)
        } else {
            event
        }
    });
    serde_json::from_value(event.payload)
}

#[cfg(test)]
mod tests {
    use super::SnapshotPolicy;

    #[test]
    fn a_snapshot_is_due_once_enough_events_were_replayed_and_appended() {
        let policy = SnapshotPolicy { every: 16, version: 1 };
        assert!(!policy.due(0, 4), "a young stream is not snapshotted");
        assert!(!policy.due(11, 4));
        assert!(policy.due(12, 4), "12 replayed and 4 appended since the last snapshot");
        assert!(policy.due(140, 4), "a long stream without a snapshot gets one");
        assert!(!policy.due(140, 0), "a command that appends nothing leaves the snapshot as it is");
    }
}
