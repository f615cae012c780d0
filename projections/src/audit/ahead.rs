//! Reading ahead: during a catch-up or a rebuild, the range after the one being written is read and
//! chained on another connection, so reading (Postgres), chaining (the server) and writing
//! (Postgres) overlap. Sound because visible positions are final and gap-free and only the run
//! itself writes its chain heads; what was chained ahead is used only by the batch that starts
//! exactly where it starts.

use super::*;

/// A range of at least this many positions is followed by chaining the next one ahead.
pub(super) const READ_AHEAD_FROM: i64 = 1_000;

/// Entries chained ahead of the projector, per run (schema): the next range read on a
/// connection of its own and chained from the heads the current batch leaves, while that
/// batch is written.
///
/// Sound because the log's positions are final once visible (rows are numbered under the log
/// head's lock in the transaction that inserts them, or by the sequencer the same way, so a
/// snapshot sees positions `1..=head` with no hole, and no row at a position ever changes),
/// and because only this run writes its heads: the batch's own heads are handed over, the
/// others' are read as committed, which the batch does not change. What was chained ahead is
/// used only by the batch that starts exactly where it starts (a batch that failed is
/// retried from its own start, so what was chained after it is dropped), and only the
/// gap-free prefix of what it read (it may run past the head); the rest of a range is read in
/// the batch's own transaction as without it.
#[derive(Default)]
pub struct Ahead {
    pending: std::sync::Mutex<HashMap<String, (i64, Chaining)>>,
    /// The range after the one being chained, read (not chained: that needs the heads the
    /// range before it leaves) while the current batch is written and the next one chained,
    /// so that reading, chaining and writing all overlap.
    reading: std::sync::Mutex<HashMap<String, (i64, i64, Reading)>>,
}

/// A range being read and chained ahead.
pub(super) type Chaining = JoinHandle<Result<Chained, sqlx::Error>>;

/// A range being read ahead.
pub(super) type Reading = JoinHandle<Result<Vec<RawEvent>, sqlx::Error>>;

impl Ahead {
    /// Starts reading and chaining `(after, upto]` for `schema` from `heads` (with what was
    /// read of it ahead, if anything was), and reading the range of the same length after it.
    pub(super) fn start(&self, log: &PgPool, schema: &str, after: i64, upto: i64, heads: Heads) {
        let read = {
            let mut reading = self.reading.lock().expect("not poisoned");
            match reading.remove(schema) {
                Some((from, to, task)) if from == after && to == upto => Some(task),
                Some((_, _, task)) => {
                    task.abort();
                    None
                }
                None => None,
            }
        };
        let (next_log, next_after, next_upto) = (log.clone(), upto, upto + (upto - after));
        let next = tokio::spawn(async move { read_raw(&next_log, next_after, next_upto, None).await });
        {
            let mut reading = self.reading.lock().expect("not poisoned");
            if reading.len() > 8 {
                reading.drain().for_each(|(_, (_, _, task))| task.abort());
            }
            if let Some((_, _, earlier)) = reading.insert(schema.to_owned(), (next_after, next_upto, next)) {
                earlier.abort();
            }
        }
        let (log, table) = (log.clone(), schema.to_owned());
        let task = tokio::spawn(async move {
            let mut events = match read {
                Some(read) => match read.await {
                    Ok(events) => events?,
                    Err(_) => read_raw(&log, after, upto, None).await?,
                },
                None => read_raw(&log, after, upto, None).await?,
            };
            let gap_free = events.iter().zip(after + 1..=upto).take_while(|(e, position)| e.position == *position).count();
            events.truncate(gap_free);
            let mut chained = Chained { heads, ..Chained::from(after) };
            chained.load_heads(&log, &table, &events).await?;
            // Hashing a range is CPU work: off the async workers.
            tokio::task::spawn_blocking(move || {
                chained.chain(&events);
                chained
            })
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("chaining ahead: {e}")))
        });
        let mut pending = self.pending.lock().expect("not poisoned");
        if pending.len() > 8 {
            // Runs retired while chaining ahead: drop what they left.
            pending.drain().for_each(|(_, (_, task))| task.abort());
        }
        if let Some((_, earlier)) = pending.insert(schema.to_owned(), (after, task)) {
            earlier.abort();
        }
    }

    /// What was chained ahead for `schema` from `after` on, if anything was and it ends
    /// within `upto`.
    pub(super) async fn take(&self, schema: &str, after: i64, upto: i64) -> Option<Chained> {
        let (from, task) = self.pending.lock().expect("not poisoned").remove(schema)?;
        if from != after {
            task.abort();
            return None;
        }
        task.await.ok()?.ok().filter(|chained| chained.upto <= upto)
    }
}
