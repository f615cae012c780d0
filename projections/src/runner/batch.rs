//! One batch of a run: a range of positions applied with its checkpoint in one transaction, and
//! catching up with the log batch by batch.

use super::*;
use sqlx::Row;

/// A batch's connection while its transaction is open: should the batch's future be dropped
/// before it commits or rolls back, the connection is closed rather than handed back to the
/// pool inside the transaction.
struct BatchTransaction {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

impl Drop for BatchTransaction {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

impl Projections {
    /// Applies one batch of `run` (a range of positions after its checkpoint), checkpoint
    /// included, atomically:
    /// all at once ([`Projection::apply_batch`]) and, if that fails, again one by one to find
    /// the event that fails.
    pub(super) async fn batch(&self, run: &Run) -> Result<Batch, Failure> {
        match self.try_batch(run, None, true).await {
            Err(_) => self.try_batch(run, None, false).await,
            done => done,
        }
    }

    /// One batch, stopping before position `stop_before` if given; `at_once` through
    /// [`Projection::apply_batch`], otherwise event by event.
    async fn try_batch(&self, run: &Run, stop_before: Option<i64>, at_once: bool) -> Result<Batch, Failure> {
        let started = Instant::now();
        let fail = |error: ProjectionError| Failure { position: 0, error };
        let conn = self.batches.acquire().await.map_err(|e| fail(e.into()))?;
        let mut tx = BatchTransaction { conn: Some(conn) };
        let outcome = self.batch_in(&mut tx, run, stop_before, at_once, started).await;
        match &outcome {
            Ok(_) => tx.conn = None,
            // Rolled back, or (should that fail too) the connection is closed when dropped.
            Err(_) => {
                if let Some(conn) = tx.conn.as_mut() {
                    if sqlx::Executor::execute(&mut **conn, "ROLLBACK").await.is_ok() {
                        tx.conn = None;
                    }
                }
            }
        }
        outcome
    }

    /// [`Self::try_batch`] on its transaction's connection. The transaction begins with the
    /// batch's first statement and commits with its last, each one simple-protocol query
    /// (`BEGIN; SELECT ..` and `UPDATE ..; COMMIT`): two round trips fewer per batch than
    /// separate `BEGIN` and `COMMIT`, and a projector waited on by a command is a chain of
    /// round trips on a busy machine. (The values in them are the run's name, a projection's
    /// own constant, and numbers.)
    async fn batch_in(
        &self,
        tx: &mut BatchTransaction,
        run: &Run,
        stop_before: Option<i64>,
        at_once: bool,
        started: Instant,
    ) -> Result<Batch, Failure> {
        let fail = |error: ProjectionError| Failure { position: 0, error };
        let projection = self.projection(run.name).expect("runs belong to known projections");
        let conn: &mut PgConnection = tx.conn.as_mut().expect("a connection until the batch ends");
        // A batch and its checkpoint commit together, so a batch lost in a crash is lost whole
        // and applied again: nothing here needs to wait for its commit to reach the disk (and
        // a flood of batches no longer queues fsyncs beside the commands' appends). Batches run
        // on connections set so (`synchronous_commit = off`), not a `SET LOCAL` each.
        //
        // The head with the run's row, then the range up to it: the sequencer commits
        // positions and the head together, so every position up to the head is visible to
        // the next statement. (After waiting for the row lock the head may be a little old:
        // the batch is then a little short, never wrong.)
        debug_assert!(run.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let begin = format!(
            "BEGIN; SELECT r.position, r.status, h.position FROM projection_runs r CROSS JOIN event_log_head h
             WHERE r.name = '{}' AND r.generation = {} FOR UPDATE OF r",
            run.name, run.generation
        );
        let rows = sqlx::Executor::fetch_all(&mut *conn, begin.as_str()).await.map_err(|e| fail(e.into()))?;
        let row: Option<(i64, String, i64)> = match rows.first() {
            Some(row) => {
                Some((|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))().map_err(|e| fail(e.into()))?)
            }
            None => None,
        };
        let Some((position, status, head)) = row.filter(|(_, s, _)| s != "retired") else {
            sqlx::Executor::execute(&mut *conn, "COMMIT").await.map_err(|e| fail(e.into()))?;
            return Ok(Batch::Gone);
        };
        let types = projection.aggregate_types();
        let span = projection.batch_span().unwrap_or(if types.is_some() { FILTERED_BATCH } else { BATCH });
        let last = head.min(position + span).min(stop_before.map_or(i64::MAX, |p| p - 1));
        if last <= position {
            sqlx::Executor::execute(&mut *conn, "COMMIT").await.map_err(|e| fail(e.into()))?;
            self.publish(run.name, &status, position);
            return Ok(Batch::Idle(position));
        }
        let more = last < head;
        if at_once {
            if let Err(error) = projection.apply_range(&mut *conn, &run.schema, position, last, &self.pool).await {
                return Err(Failure { position: position + 1, error });
            }
        } else {
            let events = log::read_range(&mut *conn, position, last, types).await.map_err(|e| fail(e.into()))?;
            for event in &events {
                if let Err(error) = apply(projection.as_ref(), &mut *conn, &run.schema, event).await {
                    return Err(Failure { position: event.position, error });
                }
            }
        }
        let commit = format!(
            "UPDATE projection_runs SET position = {last}, last_error = NULL, last_error_position = NULL, updated_at = now()
             WHERE name = '{}' AND generation = {}; COMMIT",
            run.name, run.generation
        );
        sqlx::Executor::execute(&mut *conn, commit.as_str()).await.map_err(|e| fail(e.into()))?;
        self.publish(run.name, &status, last);
        metrics::histogram!("saas_ledger_projection_batch_seconds", "projection" => run.name).record(started.elapsed().as_secs_f64());
        metrics::histogram!("saas_ledger_projection_batch_positions", "projection" => run.name).record((last - position) as f64);
        Ok(Batch::Applied { position: last, more })
    }

    pub(super) fn publish(&self, name: &str, status: &str, position: i64) {
        if status == "live" {
            if let Some(live) = self.live.get(name) {
                live.send_if_modified(|p| {
                    let moved = *p < position;
                    *p = (*p).max(position);
                    moved
                });
            }
        }
    }

    /// Applies batches until the run has caught up with the log; returns its position, or
    /// `None` if the run is gone. On a failing event, the events before it are committed and
    /// the error is recorded on the run.
    pub(super) async fn catch_up(&self, run: &Run) -> Result<Option<i64>, Failure> {
        loop {
            match self.batch(run).await {
                Ok(Batch::Applied { more: true, .. }) => continue,
                // A batch that was not full reached the end of the log as its snapshot saw
                // it: done, without another transaction to find nothing.
                Ok(Batch::Applied { position, more: false }) => return Ok(Some(position)),
                Ok(Batch::Idle(position)) => return Ok(Some(position)),
                Ok(Batch::Gone) => return Ok(None),
                Err(failure) => {
                    if failure.position > 0 {
                        // Keep the progress before the failing event; ignore a second failure here.
                        let _ = self.try_batch(run, Some(failure.position), false).await;
                    }
                    let _ = sqlx::query("UPDATE projection_runs SET last_error = $3, last_error_position = $4, updated_at = now() WHERE name = $1 AND generation = $2")
                        .bind(run.name)
                        .bind(run.generation)
                        .bind(failure.error.to_string())
                        .bind(failure.position)
                        .execute(&self.pool)
                        .await;
                    return Err(failure);
                }
            }
        }
    }
}
