//! The `audit` projection: every event becomes an entry with its actor, correlation and
//! causation ids and a one-line summary, chained per tenant by SHA-256: each entry's `hash`
//! covers its own content, a digest of the stored event, and the previous entry's hash.
//! [`verify`] recomputes the chain from the events table, so an edited or deleted event, and an
//! edited or deleted audit row, are found and named by position.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::log::StoredEvent;
use crate::runner::{Projection, ProjectionError};

/// The chain's start: the `prev_hash` of a tenant's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain key of platform events (no tenant).
pub const PLATFORM: Uuid = Uuid::nil();

/// Builds `audit_entries`.
#[derive(Debug, Clone, Copy)]
pub struct AuditProjection;

/// SHA-256 of everything stored about an event (jsonb re-serialises with sorted keys, so the
/// digest is stable however the row is read).
pub fn event_digest(e: &StoredEvent) -> String {
    let mut hasher = Sha256::new();
    for part in [
        &e.aggregate_type,
        &e.aggregate_id,
        &e.sequence.to_string(),
        &e.event_type,
        &e.event_version,
        &e.payload.to_string(),
        &e.metadata.to_string(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// An audit entry's content, as hashed.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// The event's global position.
    pub position: i64,
    /// The tenant (nil for platform events).
    pub tenant_id: Uuid,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Who.
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
    /// SHA-256 of the stored event.
    pub event_digest: String,
    /// The previous entry's hash (of the same tenant).
    pub prev_hash: String,
    /// SHA-256 over this entry and `prev_hash`.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry must have.
    pub fn expected_hash(&self) -> String {
        let mut hasher = Sha256::new();
        let fields = [
            self.position.to_string(),
            self.tenant_id.to_string(),
            self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.actor.clone(),
            self.aggregate_type.clone(),
            self.aggregate_id.clone(),
            self.event_type.clone(),
            self.summary.clone(),
            self.correlation_id.clone(),
            self.causation_id.clone(),
            self.event_digest.clone(),
            self.prev_hash.clone(),
        ];
        for field in fields {
            hasher.update(field.as_bytes());
            hasher.update([0u8]);
        }
        hex::encode(hasher.finalize())
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A one-line, human summary of an event.
pub fn summary(e: &StoredEvent) -> String {
    let p = &e.payload;
    match e.event_type.as_str() {
        "TenantCreated" => format!("tenant {} ({}) signed up on plan {}", text(p, "code"), text(p, "name"), text(p, "plan")),
        "TenantSuspended" => format!("tenant suspended: {}", text(p, "reason")),
        "TenantReactivated" => "tenant reactivated".to_owned(),
        "TenantCancelled" => format!("tenant cancelled: {}", text(p, "reason")),
        "TenantErased" => "tenant's personal data erased (key destroyed)".to_owned(),
        "BrandingUpdated" => "branding updated".to_owned(),
        "ApiKeyIssued" => format!("API key {} issued with role {}", text(p, "key_prefix"), text(p, "role")),
        "ApiKeyRevoked" => format!("API key {} revoked", text(p, "key_id")),
        "PlanPublished" => format!("plan {} version {} published", p["plan"]["code"].as_str().unwrap_or_default(), p["plan"]["version"]),
        "SubscriptionStarted" => {
            format!("subscription started on {} ({})", p["plan"]["code"].as_str().unwrap_or_default(), text(p, "billing_period"))
        }
        "PeriodStarted" => format!("billing period {} – {} started", text(p, "period_start"), text(p, "period_end")),
        "InvoiceIssued" => format!("invoice {} issued: {} {}", text(p, "number"), text(p, "total"), text(p, "currency")),
        "PlanChanged" => format!("plan changed to {}", p["plan"]["code"].as_str().unwrap_or_default()),
        "PlanChangeScheduled" => {
            format!("change to plan {} scheduled for {}", p["plan"]["code"].as_str().unwrap_or_default(), text(p, "effective_at"))
        }
        "PaymentSucceeded" => format!("payment of {} received for invoice {}", text(p, "amount"), text(p, "invoice_id")),
        "PaymentFailed" => format!("payment failed for invoice {}", text(p, "invoice_id")),
        "BookingConfirmed" => format!("booking of {} seat(s) confirmed {} – {}", p["seats"], text(p, "starts_at"), text(p, "ends_at")),
        "BookingRescheduled" => format!("booking moved to {} – {}", text(p, "starts_at"), text(p, "ends_at")),
        "BookingCancelled" => format!("booking cancelled: {}", text(p, "reason")),
        "ResourceCreated" => format!("{} \"{}\" created (capacity {})", text(p, "kind"), text(p, "name"), p["capacity"]),
        "UsageRecorded" => format!("{} {} recorded", p["quantity"], text(p, "metric")),
        other => format!("{other} on {} {}", e.aggregate_type, e.aggregate_id),
    }
}

/// The entry for `e`, chained after `prev_hash`.
pub fn entry(e: &StoredEvent, prev_hash: String) -> AuditEntry {
    let mut entry = AuditEntry {
        position: e.position,
        tenant_id: e.tenant_id.unwrap_or(PLATFORM),
        occurred_at: e.occurred_at(),
        actor: text(&e.metadata, "actor"),
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        event_type: e.event_type.clone(),
        summary: summary(e),
        correlation_id: text(&e.metadata, "correlation_id"),
        causation_id: text(&e.metadata, "causation_id"),
        event_digest: event_digest(e),
        prev_hash,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    entry
}

/// Audit entries column by column (bound as arrays).
#[derive(Default)]
struct EntryColumns {
    position: Vec<i64>,
    tenant_id: Vec<Uuid>,
    occurred_at: Vec<DateTime<Utc>>,
    actor: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    event_type: Vec<String>,
    summary: Vec<String>,
    correlation_id: Vec<String>,
    causation_id: Vec<String>,
    event_digest: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl EntryColumns {
    fn push(&mut self, e: AuditEntry) {
        self.position.push(e.position);
        self.tenant_id.push(e.tenant_id);
        self.occurred_at.push(e.occurred_at);
        self.actor.push(e.actor);
        self.aggregate_type.push(e.aggregate_type);
        self.aggregate_id.push(e.aggregate_id);
        self.event_type.push(e.event_type);
        self.summary.push(e.summary);
        self.correlation_id.push(e.correlation_id);
        self.causation_id.push(e.causation_id);
        self.event_digest.push(e.event_digest);
        self.prev_hash.push(e.prev_hash);
        self.hash.push(e.hash);
    }
}

const ENTRY_COLUMNS: &str =
    "position, tenant_id, occurred_at, actor, aggregate_type, aggregate_id, event_type, summary, correlation_id, causation_id, event_digest, prev_hash, hash";

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_entries", "audit_heads"]
    }

    fn reads_stored_events(&self) -> bool {
        true
    }

    async fn create(&self, conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
        let ddl = format!(
            "CREATE TABLE {schema}.audit_entries (
                 position       bigint PRIMARY KEY,
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
             CREATE INDEX ON {schema}.audit_entries (tenant_id, position);
             CREATE TABLE {schema}.audit_heads (tenant_id uuid PRIMARY KEY, hash text NOT NULL, position bigint NOT NULL);"
        );
        sqlx::Executor::execute(&mut *conn, ddl.as_str()).await?;
        Ok(())
    }

    /// Three statements per batch: the heads of the tenants it touches, every entry (chained
    /// in memory, in log order) in one multi-row insert, and the new heads in one upsert.
    async fn apply_batch(&self, conn: &mut PgConnection, schema: &str, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        if events.is_empty() {
            return Ok(());
        }
        let tenants: Vec<Uuid> = events.iter().map(|e| e.tenant_id.unwrap_or(PLATFORM)).collect::<BTreeSet<_>>().into_iter().collect();
        let mut heads: BTreeMap<Uuid, (String, i64)> = sqlx::query_as::<_, (Uuid, String, i64)>(&format!(
            "SELECT tenant_id, hash, position FROM {schema}.audit_heads WHERE tenant_id = ANY($1)"
        ))
        .bind(&tenants)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(tenant, hash, position)| (tenant, (hash, position)))
        .collect();
        let mut columns = EntryColumns::default();
        for event in events {
            let tenant = event.tenant_id.unwrap_or(PLATFORM);
            let prev = heads.get(&tenant).map_or_else(|| GENESIS.to_owned(), |(hash, _)| hash.clone());
            let e = entry(event, prev);
            heads.insert(tenant, (e.hash.clone(), e.position));
            columns.push(e);
        }
        sqlx::query(&format!(
            "INSERT INTO {schema}.audit_entries ({ENTRY_COLUMNS})
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])"
        ))
        .bind(&columns.position)
        .bind(&columns.tenant_id)
        .bind(&columns.occurred_at)
        .bind(&columns.actor)
        .bind(&columns.aggregate_type)
        .bind(&columns.aggregate_id)
        .bind(&columns.event_type)
        .bind(&columns.summary)
        .bind(&columns.correlation_id)
        .bind(&columns.causation_id)
        .bind(&columns.event_digest)
        .bind(&columns.prev_hash)
        .bind(&columns.hash)
        .execute(&mut *conn)
        .await?;
        let touched: Vec<(Uuid, String, i64)> =
            tenants.iter().filter_map(|t| heads.remove(t).map(|(hash, position)| (*t, hash, position))).collect();
        sqlx::query(&format!(
            "INSERT INTO {schema}.audit_heads SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])
             ON CONFLICT (tenant_id) DO UPDATE SET hash = EXCLUDED.hash, position = EXCLUDED.position"
        ))
        .bind(touched.iter().map(|t| t.0).collect::<Vec<_>>())
        .bind(touched.iter().map(|t| t.1.clone()).collect::<Vec<_>>())
        .bind(touched.iter().map(|t| t.2).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn apply(&self, conn: &mut PgConnection, schema: &str, event: &StoredEvent) -> Result<(), ProjectionError> {
        let tenant = event.tenant_id.unwrap_or(PLATFORM);
        let prev: Option<String> = sqlx::query_scalar(&format!("SELECT hash FROM {schema}.audit_heads WHERE tenant_id = $1"))
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
        let e = entry(event, prev.unwrap_or_else(|| GENESIS.to_owned()));
        sqlx::query(&format!(
            "INSERT INTO {schema}.audit_entries ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(e.position)
        .bind(e.tenant_id)
        .bind(e.occurred_at)
        .bind(&e.actor)
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .bind(&e.event_type)
        .bind(&e.summary)
        .bind(&e.correlation_id)
        .bind(&e.causation_id)
        .bind(&e.event_digest)
        .bind(&e.prev_hash)
        .bind(&e.hash)
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.audit_heads VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET hash = EXCLUDED.hash, position = EXCLUDED.position"
        ))
        .bind(tenant)
        .bind(&e.hash)
        .bind(e.position)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Whether every entry and event checked out.
    pub valid: bool,
    /// How many entries were checked.
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
    let events: Vec<StoredEvent> = sqlx::query_as(
        "SELECT position, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
         FROM events WHERE position <= $1 AND ($2::uuid IS NULL OR tenant_id IS NOT DISTINCT FROM nullif($2, '00000000-0000-0000-0000-000000000000'::uuid)) ORDER BY position",
    )
    .bind(checkpoint)
    .bind(tenant)
    .fetch_all(pool)
    .await?;
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
