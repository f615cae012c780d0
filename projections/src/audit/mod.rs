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

pub mod reads;

/// The chain's start: the `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain key of platform events (no tenant).
pub const PLATFORM: Uuid = Uuid::nil();

/// Builds `audit_entries`.
#[derive(Default)]
pub struct AuditProjection {
    ahead: Ahead,
}

/// An event exactly as stored, as the audit chain reads it: its payload and metadata as
/// Postgres's text of the stored `jsonb` (keys in `jsonb`'s own order), never upcast.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RawEvent {
    /// Global position.
    pub position: i64,
    /// The tenant it belongs to (`None` for platform events).
    pub tenant_id: Option<Uuid>,
    /// `Tenant`, `Subscription`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Position within the aggregate's stream.
    pub sequence: i64,
    /// `TenantCreated`, ...
    pub event_type: String,
    /// The payload's schema version.
    pub event_version: String,
    /// The payload's JSON text.
    pub payload: String,
    /// The metadata's JSON text.
    pub metadata: String,
    /// When the database stored it.
    pub recorded_at: DateTime<Utc>,
    /// The event's digest when Postgres computed it (a large payload, see [`RAW_COLUMNS`]):
    /// then `payload` holds only what a summary reads.
    pub digest: Option<String>,
}

/// An event as the audit reads it. A payload stored larger than 4,096 bytes (`pg_column_size`; a
/// usage batch of 1,000 facts is ~200 KB of text) does not leave Postgres: its digest is
/// computed there, byte for byte as [`event_digest`] computes it (the same parts, each followed
/// by a zero byte, the payload and metadata as `jsonb`'s text), and `payload` carries what
/// [`summary_of`] reads (the scalars and objects, arrays emptied, a batch's facts as their
/// metrics). So a range of batches costs the server a few hundred bytes each, not their payloads,
/// and both ways give the same entry.
const RAW_COLUMNS: &str = "position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
     CASE WHEN pg_column_size(payload) > 4096 THEN
         (SELECT jsonb_object_agg(k, CASE WHEN k = 'facts' AND jsonb_typeof(v) = 'array'
                                           THEN (SELECT coalesce(jsonb_agg(jsonb_build_object('metric', f -> 'metric')), '[]') FROM jsonb_array_elements(v) AS f)
                                           WHEN jsonb_typeof(v) = 'array' THEN '[]'::jsonb ELSE v END)
          FROM jsonb_each(payload) AS x(k, v))::text
     ELSE payload::text END AS payload,
     metadata::text AS metadata, recorded_at,
     CASE WHEN pg_column_size(payload) > 4096 THEN
         encode(sha256(convert_to(aggregate_type, 'UTF8') || '\\x00'::bytea || convert_to(aggregate_id, 'UTF8') || '\\x00'::bytea
                       || convert_to(sequence::text, 'UTF8') || '\\x00'::bytea || convert_to(event_type, 'UTF8') || '\\x00'::bytea
                       || convert_to(event_version, 'UTF8') || '\\x00'::bytea || convert_to(payload::text, 'UTF8') || '\\x00'::bytea
                       || convert_to(metadata::text, 'UTF8') || '\\x00'::bytea), 'hex')
     END AS digest";

/// The events at positions `after < position <= upto`, as stored, in order; only `tenant`'s
/// (`Some(None)`: only platform events) when given.
pub async fn read_raw(
    db: impl sqlx::PgExecutor<'_>,
    after: i64,
    upto: i64,
    tenant: Option<Option<Uuid>>,
) -> Result<Vec<RawEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RAW_COLUMNS} FROM events
         WHERE position > $1 AND position <= $2 AND (NOT $3 OR tenant_id IS NOT DISTINCT FROM $4::uuid)
         ORDER BY position"
    ))
    .bind(after)
    .bind(upto)
    .bind(tenant.is_some())
    .bind(tenant.flatten())
    .fetch_all(db)
    .await
}

/// SHA-256 of everything stored about an event (`jsonb`'s text is canonical: however the
/// event was written, the same stored value reads back as the same text).
pub fn event_digest(e: &RawEvent) -> String {
    if let Some(digest) = &e.digest {
        return digest.clone();
    }
    let mut hasher = Sha256::new();
    for part in [&e.aggregate_type, &e.aggregate_id, &e.sequence.to_string(), &e.event_type, &e.event_version, &e.payload, &e.metadata] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    lower_hex(&hasher.finalize())
}

/// An audit entry: one event, chained to the previous entry of its tenant (its content, as
/// hashed).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The event's log position.
    pub position: i64,
    /// The tenant (the nil UUID for platform events).
    pub tenant_id: Uuid,
    /// When it happened (the command's clock).
    pub occurred_at: DateTime<Utc>,
    /// Who: `admin`, `api_key:<id>`, `system:<job>`, ...
    pub actor: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// One line for people.
    pub summary: String,
    /// The request that started it.
    pub correlation_id: String,
    /// What directly caused it.
    pub causation_id: String,
    /// SHA-256 (hex) of the stored event.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub event_digest: String,
    /// The previous entry's hash (of the same tenant).
    pub prev_hash: String,
    /// SHA-256 (hex) over this entry and `prev_hash`.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry must have.
    pub fn expected_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let (position, tenant_id) = (self.position.to_string(), self.tenant_id.to_string());
        let occurred_at = self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for field in [
            &position,
            &tenant_id,
            &occurred_at,
            &self.actor,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.event_type,
            &self.summary,
            &self.correlation_id,
            &self.causation_id,
            &self.event_digest,
            &self.prev_hash,
        ] {
            hasher.update(field.as_bytes());
            hasher.update([0u8]);
        }
        lower_hex(&hasher.finalize())
    }
}

/// Lower-case hex of `bytes`.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    text
}

/// The payload fields that summaries name (any event's; others are skipped unread).
#[derive(Default, Deserialize)]
#[serde(default)]
struct Fields<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    plan: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
    #[serde(borrow)]
    key_prefix: Option<&'a RawValue>,
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    key_id: Option<&'a RawValue>,
    #[serde(borrow)]
    billing_period: Option<&'a RawValue>,
    #[serde(borrow)]
    period_start: Option<&'a RawValue>,
    #[serde(borrow)]
    period_end: Option<&'a RawValue>,
    #[serde(borrow)]
    number: Option<&'a RawValue>,
    #[serde(borrow)]
    total: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    effective_at: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    invoice_id: Option<&'a RawValue>,
    #[serde(borrow)]
    seats: Option<&'a RawValue>,
    #[serde(borrow)]
    starts_at: Option<&'a RawValue>,
    #[serde(borrow)]
    ends_at: Option<&'a RawValue>,
    #[serde(borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    capacity: Option<&'a RawValue>,
    #[serde(borrow)]
    quantity: Option<&'a RawValue>,
    #[serde(borrow)]
    metric: Option<&'a RawValue>,
    #[serde(borrow)]
    facts: Option<&'a RawValue>,
}

/// A plan as events embed it.
#[derive(Default, Deserialize)]
#[serde(default)]
struct PlanFields<'a> {
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    version: Option<&'a RawValue>,
}

/// The metadata fields an entry copies.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Meta<'a> {
    #[serde(borrow)]
    actor: Option<&'a RawValue>,
    #[serde(borrow)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    causation_id: Option<&'a RawValue>,
    #[serde(borrow)]
    occurred_at: Option<&'a RawValue>,
}

/// A field's string value; empty if absent or not a string.
fn text(v: Option<&RawValue>) -> String {
    v.filter(|r| r.get().starts_with('"')).and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default()
}

/// A field's JSON as written (`null` if absent), for numbers.
fn shown(v: Option<&RawValue>) -> &str {
    v.map_or("null", RawValue::get)
}

/// A one-line, human summary of an event, from its type and its payload's JSON text.
pub fn summary_of(event_type: &str, aggregate_type: &str, aggregate_id: &str, payload: &str) -> String {
    let p: Fields<'_> = serde_json::from_str(payload).unwrap_or_default();
    let plan: PlanFields<'_> =
        p.plan.filter(|r| r.get().starts_with('{')).and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or_default();
    match event_type {
        "TenantCreated" => format!("tenant {} ({}) signed up on plan {}", text(p.code), text(p.name), text(p.plan)),
        "TenantSuspended" => format!("tenant suspended: {}", text(p.reason)),
        "TenantReactivated" => "tenant reactivated".to_owned(),
        "TenantCancelled" => format!("tenant cancelled: {}", text(p.reason)),
        "TenantErased" => "tenant's personal data erased (key destroyed)".to_owned(),
        "BrandingUpdated" => "branding updated".to_owned(),
        "ApiKeyIssued" => format!("API key {} issued with role {}", text(p.key_prefix), text(p.role)),
        "ApiKeyRevoked" => format!("API key {} revoked", text(p.key_id)),
        "PlanPublished" => format!("plan {} version {} published", text(plan.code), shown(plan.version)),
        "SubscriptionStarted" => format!("subscription started on {} ({})", text(plan.code), text(p.billing_period)),
        "PeriodStarted" => format!("billing period {} – {} started", text(p.period_start), text(p.period_end)),
        "InvoiceIssued" => format!("invoice {} issued: {} {}", text(p.number), text(p.total), text(p.currency)),
        "PlanChanged" => format!("plan changed to {}", text(plan.code)),
        "PlanChangeScheduled" => format!("change to plan {} scheduled for {}", text(plan.code), text(p.effective_at)),
        "PaymentSucceeded" => format!("payment of {} received for invoice {}", text(p.amount), text(p.invoice_id)),
        "PaymentFailed" => format!("payment failed for invoice {}", text(p.invoice_id)),
        "BookingConfirmed" => format!("booking of {} seat(s) confirmed {} – {}", shown(p.seats), text(p.starts_at), text(p.ends_at)),
        "BookingRescheduled" => format!("booking moved to {} – {}", text(p.starts_at), text(p.ends_at)),
        "BookingCancelled" => format!("booking cancelled: {}", text(p.reason)),
        "ResourceCreated" => format!("{} \"{}\" created (capacity {})", text(p.kind), text(p.name), shown(p.capacity)),
        "UsageRecorded" => format!("{} {} recorded", shown(p.quantity), text(p.metric)),
        "UsageBatchRecorded" => batch_summary(p.facts),
        other => format!("{other} on {aggregate_type} {aggregate_id}"),
    }
}

/// "1000 usage facts recorded in a batch: 990 api_calls, 10 sms" (the facts per metric,
/// metrics by name).
fn batch_summary(facts: Option<&RawValue>) -> String {
    #[derive(Deserialize)]
    struct Fact<'a> {
        #[serde(borrow)]
        metric: std::borrow::Cow<'a, str>,
    }
    let facts: Vec<Fact<'_>> = facts.and_then(|f| serde_json::from_str(f.get()).ok()).unwrap_or_default();
    let mut by_metric: BTreeMap<&str, usize> = BTreeMap::new();
    for fact in &facts {
        *by_metric.entry(&fact.metric).or_default() += 1;
    }
    let metrics: Vec<String> = by_metric.into_iter().map(|(metric, n)| format!("{n} {metric}")).collect();
    format!("{} usage facts recorded in a batch: {}", facts.len(), metrics.join(", "))
}

/// [`summary_of`] an event read through the log.
pub fn summary(e: &StoredEvent) -> String {
    summary_of(&e.event_type, &e.aggregate_type, &e.aggregate_id, &e.payload.to_string())
}

/// The entry for `e`, chained after `prev_hash`.
pub fn entry(e: &RawEvent, prev_hash: String) -> AuditEntry {
    let meta: Meta<'_> = serde_json::from_str(&e.metadata).unwrap_or_default();
    let occurred_at = text(meta.occurred_at);
    let mut entry = AuditEntry {
        position: e.position,
        tenant_id: e.tenant_id.unwrap_or(PLATFORM),
        occurred_at: DateTime::parse_from_rfc3339(&occurred_at).map_or(e.recorded_at, |t| t.with_timezone(&Utc)),
        actor: text(meta.actor),
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        event_type: e.event_type.clone(),
        summary: summary_of(&e.event_type, &e.aggregate_type, &e.aggregate_id, &e.payload),
        correlation_id: text(meta.correlation_id),
        causation_id: text(meta.causation_id),
        event_digest: event_digest(e),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    entry
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

/// A range of at least this many positions is followed by chaining the next one ahead.
const READ_AHEAD_FROM: i64 = 1_000;

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
type Chaining = JoinHandle<Result<Chained, sqlx::Error>>;

/// A range being read ahead.
type Reading = JoinHandle<Result<Vec<RawEvent>, sqlx::Error>>;

impl Ahead {
    /// Starts reading and chaining `(after, upto]` for `schema` from `heads` (with what was
    /// read of it ahead, if anything was), and reading the range of the same length after it.
    fn start(&self, log: &PgPool, schema: &str, after: i64, upto: i64, heads: Heads) {
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
    async fn take(&self, schema: &str, after: i64, upto: i64) -> Option<Chained> {
        let (from, task) = self.pending.lock().expect("not poisoned").remove(schema)?;
        if from != after {
            task.abort();
            return None;
        }
        task.await.ok()?.ok().filter(|chained| chained.upto <= upto)
    }
}

/// What verifying the audit chains found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// Whether every entry matches its event and its predecessor.
    pub valid: bool,
    /// Entries checked.
    pub checked: u64,
    /// The first position where an entry or its event does not match.
    pub first_bad_position: Option<i64>,
}

/// Walks the chains (one tenant's, or every tenant's) up to the audit projection's checkpoint,
/// comparing each entry with the event stored at its position and with its predecessor.
pub async fn verify(pool: &PgPool, tenant: Option<Uuid>) -> Result<Verification, sqlx::Error> {
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM projection_runs WHERE name = 'audit' AND status = 'live'")
            .fetch_one(pool)
            .await?;
    let platform = Some(PLATFORM);
    let events = read_raw(pool, 0, checkpoint, tenant.map(|t| (Some(t) != platform).then_some(t))).await?;
    let entries: Vec<AuditEntry> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM rm.audit_entries WHERE position <= $1 AND ($2::uuid IS NULL OR tenant_id = $2) ORDER BY position"
    ))
    .bind(checkpoint)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let mut heads: std::collections::HashMap<Uuid, String> = std::collections::HashMap::new();
    let (mut events, mut entries) = (events.into_iter().peekable(), entries.into_iter().peekable());
    let mut checked = 0;
    loop {
        let bad = match (events.peek(), entries.peek()) {
            (None, None) => return Ok(Verification { valid: true, checked, first_bad_position: None }),
            // An event without its entry (entry deleted) or an entry without its event (event deleted).
            (Some(ev), Some(en)) if ev.position != en.position => Some(ev.position.min(en.position)),
            (Some(ev), None) => Some(ev.position),
            (None, Some(en)) => Some(en.position),
            (Some(ev), Some(en)) => {
                let prev = heads.get(&en.tenant_id).cloned().unwrap_or_else(|| GENESIS.to_owned());
                let expected = entry(ev, prev);
                checked += 1;
                (expected != *en).then_some(en.position)
            }
        };
        if let Some(position) = bad {
            return Ok(Verification { valid: false, checked, first_bad_position: Some(position) });
        }
        let en = entries.next().expect("peeked");
        events.next();
        heads.insert(en.tenant_id, en.hash);
    }
}

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
