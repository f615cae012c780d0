//! The `audit` projection: every event becomes an entry with its actor, correlation and
//! causation ids and a one-line summary, chained per tenant by SHA-256: each entry's `hash`
//! covers its own content, a digest of the stored event, and the previous entry's hash.
//! [`verify`] recomputes the chain from the events table, so an edited or deleted event, and an
//! edited or deleted audit row, are found and named by position.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

mod ahead;
mod chain;
pub mod reads;
mod summary;
mod verify;

use ahead::*;
pub use chain::{entry, event_digest, read_raw, AuditEntry, RawEvent, GENESIS, PLATFORM};
pub use summary::{summary, summary_of};
pub use verify::{verify, Verification};

/// Builds `audit_entries`.
#[derive(Default)]
pub struct AuditProjection {
    ahead: Ahead,
}

/// Audit entries as the text of a `COPY .. FROM STDIN` (Postgres's text format: a line per
/// row, columns separated by tabs, backslash escapes).
#[derive(Default)]
struct CopyRows(String);

impl CopyRows {
    fn push(&mut self, e: &AuditEntry) {
        use std::fmt::Write as _;
        let occurred_at = e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let _ = write!(self.0, "{}\t{}\t{occurred_at}", e.position, e.tenant_id);
        for field in [
            &e.actor,
            &e.aggregate_type,
            &e.aggregate_id,
            &e.event_type,
            &e.summary,
            &e.correlation_id,
            &e.causation_id,
            &e.event_digest,
            &e.prev_hash,
            &e.hash,
        ] {
            self.0.push('\t');
            self.field(field);
        }
        self.0.push('\n');
    }

    fn field(&mut self, text: &str) {
        if !text.contains(['\\', '\t', '\n', '\r']) {
            self.0.push_str(text);
            return;
        }
        for c in text.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '\t' => self.0.push_str("\\t"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                c => self.0.push(c),
            }
        }
    }
}

const ENTRY_COLUMNS: &str =
    "position, tenant_id, occurred_at, actor, aggregate_type, aggregate_id, event_type, summary, correlation_id, causation_id, event_digest, prev_hash, hash";

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    /// 2: the event digest covers the payload and metadata as Postgres's `jsonb` text (was:
    /// as re-serialised by serde_json).
    fn version(&self) -> i32 {
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_entries", "audit_heads"]
    }

    fn reads_stored_events(&self) -> bool {
        true
    }

    /// 6,000 positions: the only projection that reads every position, and per batch it pays a
    /// `COPY`, a heads upsert and a commit. While catching up, three ranges are in memory at
    /// once (one written, one chained, one read: see [`Ahead`]), 18,000 events in all.
    fn batch_span(&self) -> Option<i64> {
        Some(6_000)
    }

    /// Unique by position (one entry per event), and by tenant and position for each chain.
    fn deferred_indexes(&self) -> Vec<String> {
        vec![
            "CREATE UNIQUE INDEX IF NOT EXISTS audit_entries_position ON {schema}.audit_entries (position)".to_owned(),
            "CREATE INDEX IF NOT EXISTS audit_entries_tenant_position ON {schema}.audit_entries (tenant_id, position)".to_owned(),
        ]
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.audit_entries (
                 position       bigint NOT NULL,
                 tenant_id      uuid NOT NULL,
                 occurred_at    timestamptz NOT NULL,
                 actor          text NOT NULL,
                 aggregate_type text NOT NULL,
                 aggregate_id   text NOT NULL,
                 event_type     text NOT NULL,
                 summary        text NOT NULL,
                 correlation_id text NOT NULL,
                 causation_id   text NOT NULL,
                 event_digest   text NOT NULL,
                 prev_hash      text NOT NULL,
                 hash           text NOT NULL
             );
             CREATE TABLE {schema}.audit_heads (tenant_id uuid PRIMARY KEY, hash text NOT NULL, position bigint NOT NULL);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    /// Four statements per batch: the events as stored (payload and metadata as text, read
    /// without building JSON trees), the heads of the tenants they touch, every entry (chained
    /// in memory, in log order) in one `COPY`, and the new heads in one upsert. A long range
    /// (catching up, a rebuild) also starts the next one of the same length ahead, on another
    /// connection: read and chained while this one is written (see [`Ahead`]).
    async fn apply_range(&self, conn: &mut PgConnection, schema: &str, after: i64, upto: i64, log: &PgPool) -> Result<(), ProjectionError> {
        let mut chained = match self.ahead.take(schema, after, upto).await {
            Some(chained) => chained,
            None => Chained::from(after),
        };
        metrics::counter!("saas_ledger_audit_chained_ahead_events_total").increment((chained.upto - after) as u64);
        if chained.upto < upto {
            let events = read_raw(&mut *conn, chained.upto, upto, None).await?;
            chained.load_heads(&mut *conn, schema, &events).await?;
            chained.chain(&events);
        }
        if upto - after >= READ_AHEAD_FROM {
            self.ahead.start(log, schema, upto, upto + (upto - after), chained.heads.clone());
        }
        chained.write(conn, schema).await
    }

    /// One event: read again as stored (the runner's copy is parsed JSON, whose text is not
    /// what the digest covers).
    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        let events = read_raw(&mut *conn, event.position - 1, event.position, None).await?;
        let mut chained = Chained::from(event.position - 1);
        chained.load_heads(&mut *conn, schema, &events).await?;
        chained.chain(&events);
        chained.write(conn, schema).await
    }
}

/// Chain heads by tenant: the last entry's hash and position.
type Heads = BTreeMap<Uuid, (String, i64)>;

/// Entries of consecutive events chained in memory, ready to be written.
struct Chained {
    /// The last position chained (the range started after the one given to `from`).
    upto: i64,
    /// The entries, as `COPY` text.
    rows: CopyRows,
    /// The heads of every tenant seen, after the entries.
    heads: Heads,
    /// The tenants whose heads the entries moved.
    touched: BTreeSet<Uuid>,
}

impl Chained {
    fn from(after: i64) -> Self {
        Self { upto: after, rows: CopyRows::default(), heads: Heads::new(), touched: BTreeSet::new() }
    }

    /// Reads the stored heads of the tenants of `events` not known yet.
    async fn load_heads(&mut self, db: impl sqlx::PgExecutor<'_>, schema: &str, events: &[RawEvent]) -> Result<(), sqlx::Error> {
        let missing: Vec<Uuid> = events
            .iter()
            .map(|e| e.tenant_id.unwrap_or(PLATFORM))
            .filter(|t| !self.heads.contains_key(t))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let stored: Vec<(Uuid, String, i64)> =
            sqlx::query_as(&format!("SELECT tenant_id, hash, position FROM {schema}.audit_heads WHERE tenant_id = ANY($1)"))
                .bind(&missing)
                .fetch_all(db)
                .await?;
        for (tenant, hash, position) in stored {
            self.heads.insert(tenant, (hash, position));
        }
        for tenant in missing {
            self.heads.entry(tenant).or_insert_with(|| (GENESIS.to_owned(), 0));
        }
        Ok(())
    }

    /// Chains `events` (the next ones, in order; their tenants' heads loaded).
    fn chain(&mut self, events: &[RawEvent]) {
        for event in events {
            let tenant = event.tenant_id.unwrap_or(PLATFORM);
            let prev = self.heads.get(&tenant).map_or_else(|| GENESIS.to_owned(), |(hash, _)| hash.clone());
            let e = entry(event, prev);
            self.rows.push(&e);
            self.upto = e.position;
            self.heads.insert(tenant, (e.hash, e.position));
            self.touched.insert(tenant);
        }
    }

    /// Writes the entries (one `COPY`: Postgres's cheapest way in for many rows) and the moved
    /// heads (one upsert).
    async fn write(self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let mut copy = conn.copy_in_raw(&format!("COPY {schema}.audit_entries ({ENTRY_COLUMNS}) FROM STDIN")).await?;
        // In pieces: a connection's write buffer keeps the capacity of the largest message it
        // ever sent, so one message for the whole range would grow every connection's buffer to
        // the size of a batch's entries, for good.
        for piece in self.rows.0.as_bytes().chunks(COPY_PIECE) {
            if let Err(e) = copy.send(piece).await {
                let _ = copy.abort(e.to_string()).await;
                return Err(e.into());
            }
        }
        copy.finish().await?;
        let touched: Vec<(Uuid, &String, i64)> =
            self.touched.iter().filter_map(|t| self.heads.get(t).map(|(hash, position)| (*t, hash, *position))).collect();
        sqlx::query(&format!(
            "INSERT INTO {schema}.audit_heads SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])
             ON CONFLICT (tenant_id) DO UPDATE SET hash = EXCLUDED.hash, position = EXCLUDED.position"
        ))
        .bind(touched.iter().map(|t| t.0).collect::<Vec<_>>())
        .bind(touched.iter().map(|t| t.1.as_str()).collect::<Vec<_>>())
        .bind(touched.iter().map(|t| t.2).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Bytes of `COPY` data sent in one message.
const COPY_PIECE: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::CopyRows;

    #[test]
    fn copy_text_escapes_what_the_format_would_read_otherwise() {
        let mut rows = CopyRows::default();
        rows.field("plain – Zürich \"quoted\"");
        rows.field("|tab\there|line\nbreak|cr\r|back\\slash|\\N|");
        assert_eq!(rows.0, "plain – Zürich \"quoted\"|tab\\there|line\\nbreak|cr\\r|back\\\\slash|\\\\N|");
    }
}
