//! The group-commit writer: every append of this process goes through it, and appends that
//! arrive while one is being written share the next statement and commit.
//!
//! On a small machine Postgres is bound by the number of statements and commits, not by their
//! size, so one multi-row append for many concurrent commands costs little more than one for
//! a single command. No request waits for a timer: a flush takes whatever has queued while
//! the previous one ran (at most [`MAX_EVENTS`] events), so under light load each command is
//! written alone and under heavy load batches grow by themselves.
//!
//! Each flush is one call of `append_events` (`migrations/0008_positioned_appends.sql`): it
//! numbers the events in the same transaction (so they are written once and the command knows
//! its position on commit) and answers for every command on its own. A command whose stream
//! was appended to concurrently gets [`Appended::Conflict`], one a trigger refuses gets
//! [`Appended::Refused`]; neither affects the others in the batch.

use std::sync::Arc;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

/// Most events one flush writes.
const MAX_EVENTS: usize = 2_000;

/// One event to append, serialized.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `Tenant`, `Usage`, ...
    pub aggregate_type: &'static str,
    /// The stream.
    pub aggregate_id: String,
    /// Its sequence in the stream.
    pub sequence: i64,
    /// The event type.
    pub event_type: String,
    /// The payload's version.
    pub event_version: String,
    /// The event, as JSON text (serialised once, straight from the event: no JSON tree).
    pub payload: Box<serde_json::value::RawValue>,
    /// Who, why, when, as JSON text.
    pub metadata: Box<serde_json::value::RawValue>,
    /// Ids the command claims in `usage_keys` with this event, all or nothing with its events
    /// (a usage batch's facts; see migration 0016). Usually none.
    pub claims: Vec<String>,
    /// The booking context the command was decided on: its tenant and the version of that
    /// tenant's context stamp. If the stamp has moved on when the command is appended, the
    /// command is refused with `BOOKING_CONTEXT_CHANGED` and nothing of it is written (see
    /// migration 0017). Usually none.
    pub guard: Option<(uuid::Uuid, i64)>,
}

/// What became of one command's events.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Written; the position of its last event.
    At(i64),
    /// Another writer appended to the stream first (nothing written).
    Conflict,
    /// The database refused it (SQLSTATE, message, detail), e.g. a trigger's `SL409`.
    Refused {
        /// SQLSTATE.
        state: String,
        /// The error's message.
        message: String,
        /// The error's detail (JSON for our own `SLxxx` refusals).
        detail: Option<String>,
    },
}

/// One caller's commands: each group is one command's events (all or nothing).
struct Request {
    groups: Vec<Vec<NewEvent>>,
    reply: oneshot::Sender<Result<Vec<Appended>, Arc<sqlx::Error>>>,
}

/// Called with the head after every flush that wrote something (wakes the projectors).
pub type HeadHook = Arc<dyn Fn(i64) + Send + Sync>;

/// The writer's handle (cheap to clone).
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::UnboundedSender<Request>,
}

impl Appender {
    /// Starts the writer on `pool` with `writers` flushers. Each flush holds the log's head lock
    /// until it commits, so flushes of a few commands go one at a time, the next one gathering
    /// everything that arrives meanwhile; only large batches (bulk usage) are sent beside a
    /// flush in flight, to overlap their encoding with its execution. It stops when every
    /// handle is dropped.
    pub fn start(pool: PgPool, writers: usize, on_head: HeadHook) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let in_flight = Arc::new(InFlight::default());
        for _ in 0..writers.max(1) {
            tokio::spawn(flusher(pool.clone(), receiver.clone(), in_flight.clone(), on_head.clone()));
        }
        Self { queue }
    }

    /// Appends one command's events (all or nothing) and waits until they are committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Appended, Arc<sqlx::Error>> {
        let mut answers = self.append_many(vec![events]).await?;
        Ok(answers.pop().expect("one answer per group"))
    }

    /// Appends the events of several commands, each all or nothing on its own, and waits until
    /// they are committed; one answer per group, in order.
    pub async fn append_many(&self, groups: Vec<Vec<NewEvent>>) -> Result<Vec<Appended>, Arc<sqlx::Error>> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue.send(Request { groups, reply }).map_err(|_| Arc::new(sqlx::Error::PoolClosed))?;
        answer.await.map_err(|_| Arc::new(sqlx::Error::PoolClosed))?
    }
}

/// Flushes in flight, shared by a writer's flushers.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl InFlight {
    /// Takes a turn if `big` or nothing else is in flight.
    fn try_start(&self, big: bool) -> bool {
        use std::sync::atomic::Ordering;
        let mut now = self.count.load(Ordering::Acquire);
        loop {
            if now > 0 && !big {
                return false;
            }
            match self.count.compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    fn finish(&self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.done.notify_waiters();
    }
}

/// A batch this large may be written beside another flush: encoding and sending it (and
/// Postgres parsing it) then overlaps the other's execution. Smaller ones wait for the flush in
/// flight to finish, gathering what arrives meanwhile, so that they share one commit.
const BIG: usize = 256;

async fn flusher(
    pool: PgPool,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>>,
    in_flight: Arc<InFlight>,
    on_head: HeadHook,
) {
    // Each flusher keeps its own connection between flushes: taking one from the pool and
    // giving it back costs a round trip each (sqlx pings on release), and every round trip a
    // flush waits for lengthens the chain of flushes behind the log head's lock.
    let mut connection: Option<Held> = None;
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut events = weight(&first.groups);
            let mut batch = vec![first];
            loop {
                while events < MAX_EVENTS {
                    match receiver.try_recv() {
                        Ok(next) => {
                            events += weight(&next.groups);
                            batch.push(next);
                        }
                        Err(_) => break,
                    }
                }
                let done = in_flight.done.notified();
                if in_flight.try_start(events >= BIG) {
                    break;
                }
                // Wait for the flush in flight, taking in what arrives meanwhile.
                tokio::select! {
                    () = done => {}
                    next = receiver.recv(), if events < MAX_EVENTS => match next {
                        Some(next) => {
                            events += weight(&next.groups);
                            batch.push(next);
                        }
                        None => return,
                    },
                }
            }
            batch
        };
        flush(&pool, &mut connection, batch, &on_head).await;
        in_flight.finish();
    }
}

/// What a request adds to a flush: its events and the usage keys they claim (a usage batch is
/// one event claiming up to 1,000 keys).
fn weight(groups: &[Vec<NewEvent>]) -> usize {
    groups.iter().flatten().map(|e| 1 + e.claims.len()).sum()
}

/// Writes `batch` in one statement on `connection` (taken from `pool` if there is none; dropped,
/// so that the next flush takes a fresh one, if the statement failed) and answers each request.
async fn flush(pool: &PgPool, connection: &mut Option<Held>, mut batch: Vec<Request>, on_head: &HeadHook) {
    let started = Instant::now();
    let mut columns = Columns::default();
    // A second command on a stream at a sequence already taken in this batch cannot win:
    // answer it as a conflict now (it re-runs against the state the first one leaves).
    let mut seen = std::collections::HashSet::new();
    let mut answers: Vec<Vec<Option<Appended>>> = Vec::with_capacity(batch.len());
    let mut commands = 0usize;
    for request in &mut batch {
        let mut mine = Vec::with_capacity(request.groups.len());
        for events in std::mem::take(&mut request.groups) {
            let clash = events.iter().any(|e| !seen.insert((e.aggregate_type, e.aggregate_id.clone(), e.sequence)));
            if clash || events.is_empty() {
                mine.push(Some(if clash { Appended::Conflict } else { Appended::At(0) }));
                continue;
            }
            mine.push(None);
            let group = commands as i32;
            commands += 1;
            for event in events {
                columns.push(event, group);
            }
        }
        answers.push(mine);
    }
    let rows: Result<Vec<AnswerRow>, sqlx::Error> = if commands == 0 { Ok(Vec::new()) } else { write(pool, connection, &columns).await };
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            // The whole statement failed (connection lost, timeout): nothing was written.
            let error = Arc::new(error);
            for request in batch {
                let _ = request.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut by_group: Vec<Option<Appended>> = vec![None; commands];
    let mut head = None;
    for (group, position, state, message, detail) in rows {
        let answer = match (position, state) {
            (Some(position), _) => {
                head = head.max(Some(position));
                Appended::At(position)
            }
            (None, Some(state)) if state == "23505" => Appended::Conflict,
            (None, state) => Appended::Refused { state: state.unwrap_or_default(), message: message.unwrap_or_default(), detail },
        };
        if let Some(slot) = by_group.get_mut(group as usize) {
            *slot = Some(answer);
        }
    }
    if let Some(head) = head {
        on_head(head);
    }
    metrics::histogram!("saas_ledger_append_flush_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("saas_ledger_append_flush_commands").record(commands as f64);
    let mut next_group = by_group.into_iter();
    for (request, mine) in batch.into_iter().zip(answers) {
        let answers = mine
            .into_iter()
            .map(|answer| {
                answer.or_else(|| next_group.next().flatten()).unwrap_or_else(|| Appended::Refused {
                    state: "XX000".to_owned(),
                    message: "the append function gave no answer for this command".to_owned(),
                    detail: None,
                })
            })
            .collect();
        let _ = request.reply.send(Ok(answers));
    }
}

/// A flusher's connection and when it was last used.
type Held = (PoolConnection<Postgres>, Instant);

/// Runs `append_events` for `columns` on the flusher's connection.
async fn write(pool: &PgPool, connection: &mut Option<Held>, columns: &Columns) -> Result<Vec<AnswerRow>, sqlx::Error> {
    if let Some((conn, used)) = connection {
        // Idle a while: Postgres may have ended it meanwhile (as the pool checks its own).
        if used.elapsed() >= crate::db::PING_AFTER_IDLE && sqlx::Connection::ping(&mut **conn).await.is_err() {
            if let Some((mut conn, _)) = connection.take() {
                conn.close_on_drop();
            }
        }
    }
    let (conn, used) = match connection {
        Some(held) => held,
        None => connection.insert((pool.acquire().await?, Instant::now())),
    };
    let rows = sqlx::query_as(
        "SELECT grp, last_position, err_state, err_message, err_detail FROM append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&columns.aggregate_type)
    .bind(&columns.aggregate_id)
    .bind(&columns.sequence)
    .bind(&columns.event_type)
    .bind(&columns.event_version)
    .bind(&columns.payload)
    .bind(&columns.metadata)
    .bind(&columns.group)
    .bind(&columns.claim)
    .bind(&columns.claim_group)
    .bind(&columns.claim_owner)
    .bind(&columns.guard_tenant)
    .bind(&columns.guard_version)
    .bind(&columns.guard_group)
    .fetch_all(&mut **conn)
    .await;
    *used = Instant::now();
    if rows.is_err() {
        // Whatever went wrong (a lost connection, a timeout), the next flush starts afresh.
        if let Some((mut conn, _)) = connection.take() {
            conn.close_on_drop();
        }
    }
    rows
}

/// One row of `append_events`: group, last position, SQLSTATE, message, detail.
type AnswerRow = (i32, Option<i64>, Option<String>, Option<String>, Option<String>);

/// Events column by column (bound as arrays).
#[derive(Default)]
struct Columns {
    aggregate_type: Vec<&'static str>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<sqlx::types::Json<Box<serde_json::value::RawValue>>>,
    metadata: Vec<sqlx::types::Json<Box<serde_json::value::RawValue>>>,
    group: Vec<i32>,
    claim: Vec<String>,
    claim_group: Vec<i32>,
    /// The aggregate id of the event making each claim (the batch that recorded the fact).
    claim_owner: Vec<String>,
    guard_tenant: Vec<uuid::Uuid>,
    guard_version: Vec<i64>,
    guard_group: Vec<i32>,
}

impl Columns {
    fn push(&mut self, event: NewEvent, group: i32) {
        self.aggregate_type.push(event.aggregate_type);
        self.sequence.push(event.sequence);
        self.event_type.push(event.event_type);
        self.event_version.push(event.event_version);
        self.payload.push(sqlx::types::Json(event.payload));
        self.metadata.push(sqlx::types::Json(event.metadata));
        self.group.push(group);
        self.claim_group.extend(std::iter::repeat_n(group, event.claims.len()));
        self.claim_owner.extend(std::iter::repeat_n(&event.aggregate_id, event.claims.len()).cloned());
        self.claim.extend(event.claims);
        self.aggregate_id.push(event.aggregate_id);
        if let Some((tenant, version)) = event.guard {
            self.guard_tenant.push(tenant);
            self.guard_version.push(version);
            self.guard_group.push(group);
        }
    }
}
